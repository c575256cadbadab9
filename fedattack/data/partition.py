"""Client partitions of a labelled dataset: iid, Dirichlet(alpha) non-IID, label shards."""

from __future__ import annotations

from typing import Callable

import numpy as np

from fedattack.errors import ConfigError
from fedattack.registry import Registry
from fedattack.schema import PartitionConfig

PARTITIONERS: Registry[Callable[..., list[np.ndarray]]] = Registry("partitioner", "partition.name")


@PARTITIONERS.register("iid", doc="uniform random split")
def iid(targets: np.ndarray, num_clients: int, cfg, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(p) for p in np.array_split(rng.permutation(len(targets)), num_clients)]


@PARTITIONERS.register("dirichlet", doc="per-class client shares ~ Dirichlet(alpha) (Hsu et al. 2019)")
def dirichlet(targets: np.ndarray, num_clients: int, cfg, rng: np.random.Generator) -> list[np.ndarray]:
    classes = np.unique(targets)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(targets == c))
            shares = rng.dirichlet(np.full(num_clients, cfg.alpha))
            cuts = (np.cumsum(shares) * len(idx)).astype(int)[:-1]
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= cfg.min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ConfigError("partition.alpha", f"no Dirichlet({cfg.alpha}) split gives every one of {num_clients} "
                      f"clients {cfg.min_size} samples; raise alpha or lower fl.num_clients")


@PARTITIONERS.register("shards", doc="sort by label, cut into shards, deal shards_per_client to each (McMahan et al.)")
def shards(targets: np.ndarray, num_clients: int, cfg, rng: np.random.Generator) -> list[np.ndarray]:
    n_shards = num_clients * cfg.shards_per_client
    if n_shards > len(targets):
        raise ConfigError("partition.shards_per_client",
                          f"{n_shards} shards for {len(targets)} samples; lower it or fl.num_clients")
    order = np.argsort(targets, kind="stable")
    pieces = np.array_split(order, n_shards)
    deal = rng.permutation(n_shards).reshape(num_clients, cfg.shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in deal]


def partition(targets: np.ndarray, *, num_clients: int, cfg: PartitionConfig, seed: int) -> list[np.ndarray]:
    """Split dataset indices among clients; the same seed gives the same split."""
    if num_clients > len(targets):
        raise ConfigError("fl.num_clients", f"{num_clients} clients for {len(targets)} training samples")
    rng = np.random.default_rng(seed)
    return PARTITIONERS.get(cfg.name)(np.asarray(targets), num_clients, cfg, rng)
