"""Flower strategies by name (`fl.strategy`), or `module:Class` for your own.

The registry only names them; fedattack.server.strategies builds the configured one with the
participation the config sets."""

from __future__ import annotations

from flwr.serverapp import strategy as fs

from fedattack.registry import Registry

STRATEGIES: Registry[type] = Registry("strategy", "fl.strategy")
for _name, _cls in {
    "fedavg": fs.FedAvg, "fedprox": fs.FedProx, "fedadam": fs.FedAdam, "fedadagrad": fs.FedAdagrad,
    "fedyogi": fs.FedYogi, "fedavgm": fs.FedAvgM, "fedmedian": fs.FedMedian,
    "fedtrimmedavg": fs.FedTrimmedAvg, "krum": fs.Krum, "multikrum": fs.MultiKrum, "bulyan": fs.Bulyan,
    "qfedavg": fs.QFedAvg,
}.items():
    STRATEGIES.register(_name, _cls, doc=f"flwr {_cls.__name__}")
