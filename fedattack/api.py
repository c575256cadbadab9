"""The public API for a Flower user's own app, exported from the package top level.

Server side (in your ServerApp):

    from fedattack import AuditStrategy, TrainingProtocol

    strategy = AuditStrategy(FedAvg(...), model=Net(), protocol=TrainingProtocol(...), attacks=[...],
                             mean=..., std=..., out_dir="runs/audit")
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=3, train_config=ConfigRecord({"lr": 0.1}))

Client side (in your ClientApp, for scoring in simulation):

    from fedattack import AuditedLoader, audit_mod

    @app.train(mods=[audit_mod])
    def train(msg, context):
        ...
        trainloader = AuditedLoader(trainloader)

Under SecAgg+, `secaggplus_message_mod` (client) and `start_secagg` (server) run a Message-API
app through Flower's legacy SecAgg+ workflow (see fedattack.server.secagg for what it cannot do).
"""

from fedattack.client.record import AuditedLoader, audit_mod, record_samples
from fedattack.client.secagg import secaggplus_message_mod
from fedattack.server.audit import AuditStrategy
from fedattack.server.protocol import TrainingProtocol
from fedattack.server.secagg import start_secagg
from fedattack.threat import DataSpec, ModelSpec, Observation, Protocol

__all__ = ["AuditStrategy", "TrainingProtocol", "AuditedLoader", "audit_mod", "record_samples",
           "secaggplus_message_mod", "start_secagg", "DataSpec", "ModelSpec", "Observation", "Protocol"]
