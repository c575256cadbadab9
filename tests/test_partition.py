"""Partitioners (flwr-datasets' behind `partition.name`): sizes honour partition.min_size, the seed
fixes every split, and where flwr-datasets draws as fedattack's own partitioners did, the splits
are the same."""

from __future__ import annotations

import numpy as np
import pytest

from fedattack import config as fconfig
from fedattack.data import PARTITIONERS, partition
from fedattack.errors import ConfigError

TARGETS = np.repeat(np.arange(5), 40)  # 200 samples, 5 classes


def _pcfg(*overrides):
    return fconfig.load(None, ["audit.attacks=[]", *overrides]).partition


def _check(parts, n_clients, min_size):
    allidx = np.concatenate(parts)
    assert len(parts) == n_clients
    assert len(allidx) == len(set(allidx.tolist())) and allidx.min() >= 0 and allidx.max() < len(TARGETS)
    assert all((np.diff(p) > 0).all() for p in parts)  # sorted indices
    assert min(len(p) for p in parts) >= min_size


@pytest.mark.parametrize("name, overrides", [
    ("iid", []), ("dirichlet", ["partition.alpha=0.5"]), ("shards", ["partition.shards_per_client=3"]),
    ("pathological", ["partition.classes_per_client=2"]), ("inner_dirichlet", ["partition.alpha=0.5"]),
    ("linear", []), ("square", []),
])
def test_every_partitioner_honours_min_size_and_the_seed(name, overrides):
    cfg = _pcfg(f"partition.name={name}", "partition.min_size=3", *overrides)
    parts = partition(TARGETS, num_clients=5, cfg=cfg, seed=3)
    _check(parts, 5, 3)
    again = partition(TARGETS, num_clients=5, cfg=cfg, seed=3)
    assert all((a == b).all() for a, b in zip(parts, again))
    other = partition(TARGETS, num_clients=5, cfg=cfg, seed=4)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(parts, other))


def test_registry_names():
    assert set(PARTITIONERS.names()) >= {"iid", "dirichlet", "shards", "pathological", "inner_dirichlet", "linear",
                                         "square", "exponential", "natural_id"}


def test_iid_min_size_is_a_config_error():
    with pytest.raises(ConfigError, match="partition.min_size") as err:
        partition(TARGETS, num_clients=100, cfg=_pcfg("partition.name=iid", "partition.min_size=3"), seed=0)
    assert "client" in str(err.value) and "\n" not in str(err.value)
    parts = partition(TARGETS, num_clients=100, cfg=_pcfg("partition.name=iid", "partition.min_size=2"), seed=0)
    assert [len(p) for p in parts] == [2] * 100


def test_size_skew():
    sizes = [len(p) for p in partition(TARGETS, num_clients=4, cfg=_pcfg("partition.name=linear"), seed=0)]
    assert sizes == sorted(sizes) and sum(sizes) == 200 and sizes[-1] > 3 * sizes[0]
    with pytest.raises(ConfigError, match="partition.min_size"):  # 1/91 of 200 is 2 samples
        partition(TARGETS, num_clients=6, cfg=_pcfg("partition.name=square", "partition.min_size=3"), seed=0)
    with pytest.raises(ConfigError, match="fl.num_clients"):  # e^1 / sum(e^1..e^8) of 200 is 0 samples
        partition(TARGETS, num_clients=8, cfg=_pcfg("partition.name=exponential"), seed=0)


def test_iid_is_todays_split():
    """fedattack's own iid split was rng.permutation then np.array_split: flwr-datasets' IidPartitioner on the
    table shuffled with the seed is the same split."""
    for seed in (0, 1, 7):
        rng = np.random.default_rng(seed)
        expected = [np.sort(p) for p in np.array_split(rng.permutation(len(TARGETS)), 8)]
        got = partition(TARGETS, num_clients=8, cfg=_pcfg("partition.name=iid"), seed=seed)
        assert all((a == b).all() for a, b in zip(expected, got))


def test_shards_deal_as_today():
    """The shard dealing draws one permutation of the shards, as fedattack's own did: the same label counts
    per client when the shards divide the dataset."""
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        deal = rng.permutation(10).reshape(5, 2)
        expected = [[0] * 5 for _ in range(5)]
        for client, row in enumerate(deal):
            for s in row:
                expected[client][int(s) // 2] += 20  # 10 shards of 20, two per class
        got = partition(TARGETS, num_clients=5, cfg=_pcfg("partition.name=shards"), seed=seed)
        assert [np.bincount(TARGETS[p], minlength=5).tolist() for p in got] == expected


def test_dirichlet_min_size_and_impossible_alpha():
    parts = partition(TARGETS, num_clients=8, cfg=_pcfg("partition.alpha=0.3", "partition.min_size=5"), seed=2)
    _check(parts, 8, 5)
    assert len(np.concatenate(parts)) == 200
    with pytest.raises(ConfigError, match="partition.alpha"):
        partition(TARGETS, num_clients=20, cfg=_pcfg("partition.alpha=0.01", "partition.min_size=9"), seed=0)


@pytest.mark.parametrize("mode", ["random", "deterministic", "first-deterministic"])
def test_pathological_classes_per_client(mode):
    cfg = _pcfg("partition.name=pathological", "partition.classes_per_client=2", f"partition.class_assignment={mode}")
    parts = partition(TARGETS, num_clients=5, cfg=cfg, seed=0)
    assert all(len(np.unique(TARGETS[p])) <= 2 for p in parts)
    if mode == "deterministic":  # client i holds classes i and i+1 (mod 5)
        assert [sorted(np.unique(TARGETS[p]).tolist()) for p in parts] == [[0, 1], [1, 2], [2, 3], [3, 4], [0, 4]]


def test_pathological_bad_settings():
    with pytest.raises(ConfigError, match="partition.class_assignment"):
        partition(TARGETS, num_clients=5, cfg=_pcfg("partition.name=pathological", "partition.class_assignment=sorted"), seed=0)
    with pytest.raises(ConfigError, match="partition.classes_per_client"):
        partition(TARGETS, num_clients=5, cfg=_pcfg("partition.name=pathological", "partition.classes_per_client=6"), seed=0)


def test_natural_id_is_one_client_per_label():
    parts = partition(TARGETS, num_clients=5, cfg=_pcfg("partition.name=natural_id"), seed=0)
    assert [np.unique(TARGETS[p]).tolist() for p in parts] == [[0], [1], [2], [3], [4]]
    assert all(len(p) == 40 for p in parts)
    with pytest.raises(ConfigError, match="fl.num_clients"):
        partition(TARGETS, num_clients=4, cfg=_pcfg("partition.name=natural_id"), seed=0)


def test_shards_too_many_is_a_config_error():
    with pytest.raises(ConfigError, match="partition.shards_per_client"):
        partition(TARGETS, num_clients=50, cfg=_pcfg("partition.name=shards", "partition.shards_per_client=5"), seed=0)
