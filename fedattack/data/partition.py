"""Client partitions of a labelled dataset, by flwr-datasets' partitioners.

Every partitioner here is one of flwr-datasets' (`flwr_datasets.partitioner`), run offline on
a local `datasets.Dataset` with two columns: `label` (the training split's targets) and
`index` (each sample's position in the split). As flwr-datasets' `FederatedDataset` does
before partitioning, that table is first shuffled with the run's seed, and the seed is also
the partitioner's own; a client's partition is the `index` column of what the partitioner
returns for it, sorted. So one seed fixes every partition, and a partition never depends on
the order of the dataset's files.

`partition.min_size` holds for every partitioner: a split that leaves a client fewer samples
is a ConfigError naming the key to change, never a silently empty client.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Callable

import numpy as np

from fedattack.errors import ConfigError, first_line
from fedattack.registry import Registry
from fedattack.schema import PartitionConfig

# fn(targets, num_clients, cfg, seed) -> one array of training-split indices per client
PARTITIONERS: Registry[Callable[..., list[np.ndarray]]] = Registry("partitioner", "partition.name")

CLASS_ASSIGNMENTS = ("random", "deterministic", "first-deterministic")


def _table(targets: np.ndarray, seed: int):
    import datasets

    table = datasets.Dataset.from_dict({"label": targets.astype(np.int64), "index": np.arange(len(targets))})
    # arrow format: the partitioners read columns as Arrow arrays, not Python lists (the same splits, 2-20x faster)
    return table.shuffle(seed=seed).with_format("arrow")


def _run(make: Callable[[], object], targets: np.ndarray, seed: int, key: str) -> list[np.ndarray]:
    """Partition with a flwr-datasets partitioner built by `make`; its ValueErrors name `key`."""
    try:
        partitioner = make()
        partitioner.dataset = _table(targets, seed)
        # flwr-datasets warns on every Dirichlet retry and on unused classes, and NaturalIdPartitioner
        # draws a progress bar: the outcome is checked below instead
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            n = partitioner.num_partitions
            return [np.sort(np.asarray(partitioner.load_partition(i)["index"], dtype=np.int64)) for i in range(n)]
    except (ValueError, TypeError) as exc:
        raise ConfigError(key, first_line(exc) or type(exc).__name__) from None


@PARTITIONERS.register("iid", doc="uniform random split, equal sizes (flwr-datasets IidPartitioner)")
def iid(targets: np.ndarray, num_clients: int, cfg, seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import IidPartitioner

    return _run(lambda: IidPartitioner(num_partitions=num_clients), targets, seed, "fl.num_clients")


@PARTITIONERS.register("dirichlet", doc="per-class client shares ~ Dirichlet(partition.alpha) (Yurochkin et al. "
                                        "2019; Hsu et al. 2019; flwr-datasets DirichletPartitioner)")
def dirichlet(targets: np.ndarray, num_clients: int, cfg, seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import DirichletPartitioner

    try:
        return _run(lambda: DirichletPartitioner(
            num_partitions=num_clients, partition_by="label", alpha=float(cfg.alpha), min_partition_size=cfg.min_size,
            self_balancing=False, shuffle=True, seed=seed), targets, seed, "partition.alpha")
    except ConfigError as exc:
        if "max number of attempts" not in str(exc):
            raise
        raise ConfigError("partition.alpha", f"Dirichlet({cfg.alpha}) left a client with fewer than partition.min_size="
                                             f"{cfg.min_size} of the {len(targets)} training images in every try; "
                                             "allowed: a larger partition.alpha, fewer fl.num_clients or a smaller "
                                             "partition.min_size") from None


@PARTITIONERS.register("shards", doc="sort by label, cut equal shards, deal partition.shards_per_client to each "
                                     "(McMahan et al. 2017; flwr-datasets ShardPartitioner)")
def shards(targets: np.ndarray, num_clients: int, cfg, seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import ShardPartitioner

    spp = int(cfg.shards_per_client)
    if num_clients * spp > len(targets):
        raise ConfigError("partition.shards_per_client", f"{num_clients * spp} shards for {len(targets)} samples; "
                                                         "lower it or fl.num_clients")
    return _run(lambda: ShardPartitioner(num_partitions=num_clients, partition_by="label",
                                         num_shards_per_partition=spp, shuffle=True, seed=seed),
                targets, seed, "partition.shards_per_client")


@PARTITIONERS.register("pathological", doc="partition.classes_per_client classes per client, each class split "
                                           "evenly among its clients (flwr-datasets PathologicalPartitioner)")
def pathological(targets: np.ndarray, num_clients: int, cfg, seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import PathologicalPartitioner

    k = int(getattr(cfg, "classes_per_client", 2))
    mode = str(getattr(cfg, "class_assignment", "random"))
    if k < 1:
        raise ConfigError("partition.classes_per_client", f"must be > 0, got {k}")
    if mode not in CLASS_ASSIGNMENTS:
        raise ConfigError("partition.class_assignment", f"unknown value '{mode}'; allowed: {', '.join(CLASS_ASSIGNMENTS)}")
    n_classes = len(np.unique(targets))
    if k > n_classes:
        raise ConfigError("partition.classes_per_client", f"{k} classes per client, but the training split has "
                                                          f"{n_classes}")
    return _run(lambda: PathologicalPartitioner(num_partitions=num_clients, partition_by="label",
                                                num_classes_per_partition=k, class_assignment_mode=mode,
                                                shuffle=True, seed=seed),
                targets, seed, "partition.classes_per_client")


@PARTITIONERS.register("inner_dirichlet", doc="equal client sizes, each client's label mix ~ Dirichlet("
                                              "partition.alpha) (flwr-datasets InnerDirichletPartitioner)")
def inner_dirichlet(targets: np.ndarray, num_clients: int, cfg, seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import InnerDirichletPartitioner

    sizes = [len(a) for a in np.array_split(np.arange(len(targets)), num_clients)]
    return _run(lambda: InnerDirichletPartitioner(partition_sizes=sizes, partition_by="label",
                                                  alpha=float(cfg.alpha), shuffle=True, seed=seed),
                targets, seed, "partition.alpha")


def _sized(cls_name: str, rule: str):
    def fn(targets: np.ndarray, num_clients: int, cfg, seed: int) -> list[np.ndarray]:
        import flwr_datasets.partitioner as fp

        return _run(lambda: getattr(fp, cls_name)(num_partitions=num_clients), targets, seed, "fl.num_clients")

    fn.__doc__ = f"IID labels, client i's size proportional to {rule} (flwr-datasets {cls_name})"
    return fn


PARTITIONERS.register("linear", _sized("LinearPartitioner", "i"))
PARTITIONERS.register("square", _sized("SquarePartitioner", "i^2"))
PARTITIONERS.register("exponential", _sized("ExponentialPartitioner", "e^i"))


@PARTITIONERS.register("natural_id", doc="one client per label value (flwr-datasets NaturalIdPartitioner on the "
                                         "label column): fl.num_clients must equal the number of classes")
def natural_id(targets: np.ndarray, num_clients: int, cfg, seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import NaturalIdPartitioner

    n_ids = len(np.unique(targets))
    if n_ids != num_clients:
        raise ConfigError("fl.num_clients", f"partition 'natural_id' gives one client per label value: the training "
                                            f"split has {n_ids}; set fl.num_clients={n_ids}")
    return _run(lambda: NaturalIdPartitioner(partition_by="label"), targets, seed, "partition.name")


def partition(targets: np.ndarray, *, num_clients: int, cfg: PartitionConfig, seed: int) -> list[np.ndarray]:
    """Split dataset indices among clients; the same seed gives the same split.

    Every client gets at least `cfg.min_size` samples, or a ConfigError says which key to change.
    """
    targets = np.asarray(targets)
    if num_clients > len(targets):
        raise ConfigError("fl.num_clients", f"{num_clients} clients for {len(targets)} training samples; allowed: "
                                            f"at most {len(targets) // max(1, cfg.min_size)} (partition.min_size="
                                            f"{cfg.min_size} samples each), or a larger dataset")
    if num_clients * cfg.min_size > len(targets):
        raise ConfigError("fl.num_clients", f"{len(targets)} training samples cannot give {num_clients} clients "
                                            f"{cfg.min_size} samples each (partition.min_size), whatever the "
                                            "partitioner; lower fl.num_clients or partition.min_size, or add data")
    parts = PARTITIONERS.get(cfg.name)(targets, num_clients, cfg, int(seed))
    sizes = [len(p) for p in parts]
    if min(sizes) < cfg.min_size:
        small = int(np.argmin(sizes))
        raise ConfigError("partition.min_size", f"partition '{cfg.name}' gives client {small} only {sizes[small]} "
                                                f"samples ({len(targets)} for {num_clients} clients), fewer than "
                                                f"{cfg.min_size}; lower partition.min_size or fl.num_clients, or "
                                                "change the partition's own parameters")
    return parts
