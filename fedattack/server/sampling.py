"""Seeded client sampling: the same clients every run, whatever node ids Flower draws.

Flower's strategies sample `random.sample(list(grid.get_node_ids()), k)` with Python's global
generator, and a simulation gives its nodes new random ids every run. With a seed, the audit
strategy first asks every node who it is (an identification message that `audit_mod` answers
with the node's partition id, without calling the train function), then hands the wrapped
strategy a view of the grid that lists nodes in partition order, and seeds Python's generator
from (seed, round, stage) around each `configure_train`/`configure_evaluate` (restoring it
after). The sample is then a function of the seed and the partition ids. The server waits for
the answers as long as it waits for a round's replies (a simulation's first answers take minutes
on a loaded machine, where every client process imports torch first), and before the next sample
asks again the nodes that joined later or missed that wait. Nodes that answer without
identifying themselves (no `audit_mod`: their train function receives a message without arrays,
and fails) are not asked again, nor are nodes that missed two waits; they, and nodes that have
not answered yet, are listed after the others in node-id order; the audit says how many in one
log line.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from logging import INFO, WARNING

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fedattack.client.record import IDENTIFY_KEY
from fedattack.server.grids import GridView


class OrderedGrid(GridView):
    """A Grid whose `get_node_ids` lists nodes in a fixed order (by client id where known)."""

    def __init__(self, grid: Grid, clients: dict[int, int]):
        super().__init__(grid)
        self._clients = clients

    def get_node_ids(self) -> Iterable[int]:
        ids = list(self._grid.get_node_ids())
        return sorted(ids, key=lambda n: (0, self._clients[n], n) if n in self._clients else (1, 0, n))


class SeededSampling:
    """Which node is which client, and the seeded view of the grid the wrapped strategy samples from."""

    def __init__(self, seed: int | None):
        self.seed = seed
        self.clients: dict[int, int] = {}  # node id -> client id (partition id in a simulation)
        self.silent: set[int] = set()  # nodes that answered without identifying, or missed two asks: not asked again
        self.asks: dict[int, int] = {}  # node id -> identifications sent
        self.timeout = 600.0  # seconds to wait for answers (`identify` sets it)

    def learn(self, node_id: int, client: int) -> None:
        self.clients[int(node_id)] = int(client)

    def identify(self, grid: Grid, *, min_nodes: int, timeout: float) -> None:
        """Ask every node not yet known for its client id, waiting for `min_nodes` first and for
        the answers up to `timeout` seconds (before round 1, and before each sample for nodes
        that joined since)."""
        if self.seed is None:
            return
        self.timeout = timeout
        deadline = time.monotonic() + timeout
        while len(nodes := list(grid.get_node_ids())) < min_nodes and time.monotonic() < deadline:
            time.sleep(0.5)
        unknown = [n for n in nodes if n not in self.clients and n not in self.silent]
        if not unknown:
            return
        for n in unknown:
            self.asks[n] = self.asks.get(n, 0) + 1
        messages = [Message(RecordDict({IDENTIFY_KEY: ConfigRecord({})}), dst_node_id=n,
                            message_type=MessageType.TRAIN) for n in unknown]
        answered = set()
        for reply in grid.send_and_receive(messages, timeout=max(1.0, deadline - time.monotonic())):
            answered.add(int(reply.metadata.src_node_id))
            record = None if reply.has_error() else reply.content.config_records.get(IDENTIFY_KEY)
            if record is not None and "client" in record:
                self.learn(reply.metadata.src_node_id, int(record["client"]))
            else:  # an answer, but not an identification: no audit_mod there, so never ask again
                self.silent.add(int(reply.metadata.src_node_id))
        plain = [n for n in unknown if n in answered and n not in self.clients]
        mute = [n for n in unknown if n not in answered]
        self.silent.update(n for n in mute if self.asks[n] >= 2)  # a node that never answers costs two waits
        if plain:
            log(WARNING, "fedattack: %d of %d nodes answered without identifying themselves (no fedattack audit_mod "
                         "on their train function); they are sampled in node-id order, which can change between "
                         "runs", len(plain), len(nodes))
        if mute:
            log(WARNING, "fedattack: %d of %d nodes did not answer within %.0f s (not started?); they are sampled "
                         "in node-id order, which can change between runs", len(mute), len(nodes), timeout)
        if not plain and not mute:
            log(INFO, "fedattack: %d nodes identified; sampling is seeded by seed=%s", len(nodes), self.seed)

    @contextmanager
    def seeded(self, grid: Grid, server_round: int, stage: str) -> Iterator[Grid]:
        """The grid the wrapped strategy samples from in one configure call, Python's random
        generator seeded from (seed, round, stage) meanwhile; without a seed, the grid as is."""
        if self.seed is None:
            yield grid
            return
        self.identify(grid, min_nodes=0, timeout=self.timeout)  # nodes that joined since the last sample
        state = random.getstate()
        random.seed(f"fedattack:{self.seed}:{server_round}:{stage}")
        try:
            yield OrderedGrid(grid, self.clients)
        finally:
            random.setstate(state)
