"""A Flower strategy of your own: used unchanged, wrapped by fedattack's AuditStrategy."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg


class MyFedAvg(FedAvg):
    """FedAvg that counts the replies it aggregates (any Message-API strategy works the same way)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.replies_seen = 0

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.replies_seen += len(replies)
        return super().aggregate_train(server_round, replies)
