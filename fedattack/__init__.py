"""fedattack: federated-learning simulation with a malicious-server audit of gradient leakage.

The public API for your own Flower app (`AuditStrategy`, `TrainingProtocol`, `AuditedLoader`,
`audit_mod`, ...; see fedattack.api) is importable from here: `from fedattack import
AuditStrategy`. It loads on first use, so importing a lower module such as fedattack.errors
loads neither Flower nor torch.
"""

__version__ = "0.1.0"

_PUBLIC = ("AuditStrategy", "TrainingProtocol", "AuditedLoader", "audit_mod", "record_samples",
           "secaggplus_message_mod", "start_secagg", "DataSpec", "ModelSpec", "Observation", "Protocol")
__all__ = list(_PUBLIC)  # `from fedattack import *` loads them


def __getattr__(name: str):
    if name in _PUBLIC:
        from fedattack import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedattack' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
