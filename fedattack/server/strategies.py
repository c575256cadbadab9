"""Flower strategies by name (`fl.strategy`), or `module:Class` for your own."""

from __future__ import annotations

import inspect

from flwr.serverapp import strategy as fs

from fedattack.config import Config
from fedattack.errors import ConfigError
from fedattack.registry import Registry, call_with_known

STRATEGIES: Registry[type] = Registry("strategy", "fl.strategy")
for _name, _cls in {
    "fedavg": fs.FedAvg, "fedprox": fs.FedProx, "fedadam": fs.FedAdam, "fedadagrad": fs.FedAdagrad,
    "fedyogi": fs.FedYogi, "fedavgm": fs.FedAvgM, "fedmedian": fs.FedMedian,
    "fedtrimmedavg": fs.FedTrimmedAvg, "krum": fs.Krum, "multikrum": fs.MultiKrum, "bulyan": fs.Bulyan,
    "qfedavg": fs.QFedAvg,
}.items():
    STRATEGIES.register(_name, _cls, doc=f"flwr {_cls.__name__}")


def build_strategy(cfg: Config) -> fs.Strategy:
    """Instantiate the configured strategy with partial participation set from `fl.*`."""
    target = STRATEGIES.get(cfg.fl.strategy)
    if isinstance(target, fs.Strategy):
        return with_protocol_defenses(target, cfg)
    n, k = cfg.fl.num_clients, cfg.fl.clients_per_round
    kwargs = {
        "fraction_train": k / n,
        "min_train_nodes": k,
        "min_available_nodes": n,
        "fraction_evaluate": 0.0,  # evaluation is centralized, on the server's test split
        "min_evaluate_nodes": 0,
        **cfg.fl.strategy_args,
    }
    if not (inspect.isclass(target) and issubclass(target, fs.Strategy)) and not callable(target):
        raise ConfigError("fl.strategy", f"'{cfg.fl.strategy}' is not a Flower Strategy class or factory")
    try:
        strategy = call_with_known(target, kwargs)
    except TypeError as exc:
        raise ConfigError("fl.strategy_args", f"cannot build {cfg.fl.strategy}: {exc}") from None
    if not isinstance(strategy, fs.Strategy):
        raise ConfigError("fl.strategy", f"'{cfg.fl.strategy}' did not produce a flwr Strategy")
    return with_protocol_defenses(strategy, cfg)


def with_protocol_defenses(strategy: fs.Strategy, cfg: Config) -> fs.Strategy:
    """The server side of protocol-level defenses: Flower's DP strategy wrapper for `flowerdp`."""
    from fedattack.defenses.flower_dp import server_strategy

    return server_strategy(strategy, cfg)
