"""fedattack: federated-learning simulation with a malicious-server audit of gradient leakage."""

__version__ = "0.1.0"
