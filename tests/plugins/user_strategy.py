"""A user's own Flower strategy, as a user would write it: a FedAvg subclass overriding aggregate_train."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

SEEN: list[dict] = []


class RecordingFedAvg(FedAvg):
    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        SEEN.append({"round": server_round, "n": len(replies),
                     "keys": sorted(set().union(*(set(r.content.keys()) for r in replies if not r.has_error())))})
        return super().aggregate_train(server_round, replies)


class MislabelledKeys(FedAvg):
    """A misconfigured strategy: it sends its arrays under "weights" but expects replies under
    its arrayrecord_key "arrays" (clients reply under the key they received)."""

    def configure_train(self, server_round, arrays, config, grid):
        messages = list(super().configure_train(server_round, arrays, config, grid))
        content = messages[0].content if messages else None  # FedAvg's messages share one RecordDict
        if content is not None:
            content["weights"] = content["arrays"]
            del content["arrays"]
        return messages


EVERY_CLIENT = FedAvg()  # an object: it keeps its own sampling (every client, each round)
QUARTER_OF_EIGHT = FedAvg(fraction_train=0.25, fraction_evaluate=0.0, min_available_nodes=8)
