"""The configured Flower strategy, built with the participation `fl.*` sets and wrapped for
protocol-level defenses."""

from __future__ import annotations

import inspect

from flwr.serverapp import strategy as fs

from fedattack.defenses.flower_dp import server_strategy
from fedattack.errors import ConfigError
from fedattack.registry import call_with_known
from fedattack.schema import Config
from fedattack.strategies import STRATEGIES


def build_strategy(cfg: Config) -> fs.Strategy:
    """Instantiate the configured strategy with partial participation set from `fl.*`."""
    target = STRATEGIES.get(cfg.fl.strategy)
    if isinstance(target, fs.Strategy):
        return server_strategy(target, cfg)
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
    return server_strategy(strategy, cfg)
