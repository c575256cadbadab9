"""Flower strategies by name (`fl.strategy`), or `module:Class` for your own.

The registry only names them; fedattack.server.strategies builds the configured one with the
participation the config sets. fedattack drives strategies through Flower's Message API
(`flwr.serverapp.strategy`); a legacy `flwr.server.strategy` Strategy is refused by name."""

from __future__ import annotations

import inspect
import math
import typing
from typing import Any

from flwr.server import strategy as legacy
from flwr.serverapp import strategy as fs

from fedattack.errors import ConfigError, first_line
from fedattack.logs import quiet_logs
from fedattack.registry import Registry, article, describe, from_standard_library

MESSAGE_API = "the Message API (a flwr.serverapp.strategy Strategy) is needed"


def strategy_problem(obj: Any) -> str | None:
    """Why `obj` is not a Message-API strategy class, instance or factory (None if it is).

    A factory is a function of yours annotated to return a flwr.serverapp.strategy Strategy."""
    if isinstance(obj, legacy.Strategy) or (inspect.isclass(obj) and issubclass(obj, legacy.Strategy)):
        return f"is a legacy flwr.server.strategy Strategy ({describe(obj)}); {MESSAGE_API}"
    if isinstance(obj, fs.Strategy) or (inspect.isclass(obj) and issubclass(obj, fs.Strategy)):
        return None
    if inspect.isfunction(obj) and not from_standard_library(obj):
        try:
            returns = typing.get_type_hints(obj).get("return")
        except Exception:  # noqa: BLE001 - unresolvable annotations: no usable return type
            returns = None
        if inspect.isclass(returns) and issubclass(returns, fs.Strategy):
            return None
        return (f"is {describe(obj)}, not a strategy factory (annotate it to return a "
                "flwr.serverapp.strategy Strategy)")
    return f"is {describe(obj)}, not a strategy; {MESSAGE_API}"


STRATEGIES: Registry[type] = Registry("strategy", "fl.strategy", accepts=strategy_problem)
for _name, _cls in {
    "fedavg": fs.FedAvg, "fedprox": fs.FedProx, "fedadam": fs.FedAdam, "fedadagrad": fs.FedAdagrad,
    "fedyogi": fs.FedYogi, "fedavgm": fs.FedAvgM, "fedmedian": fs.FedMedian,
    "fedtrimmedavg": fs.FedTrimmedAvg, "krum": fs.Krum, "multikrum": fs.MultiKrum, "bulyan": fs.Bulyan,
    "qfedavg": fs.QFedAvg,
}.items():
    STRATEGIES.register(_name, _cls, doc=f"flwr {_cls.__name__}")


def check_replies(name: str, args: dict, clients_per_round: int) -> None:
    """A strategy that needs more replies per round than the round samples (Flower's Bulyan:
    4 * num_malicious_nodes + 3) skips every aggregation and the model never trains: refused."""
    target = STRATEGIES.find(name)
    if not (inspect.isclass(target) and issubclass(target, fs.Bulyan)):
        return
    malicious = args.get("num_malicious_nodes", 0)
    need = 4 * malicious + 3 if isinstance(malicious, int) else 3
    if clients_per_round < need:
        raise ConfigError("fl.clients_per_round", f"{name} aggregates only {need} or more replies "
                                                  f"(4 * num_malicious_nodes + 3, num_malicious_nodes={malicious}) "
                                                  f"and otherwise skips the round, so the model would never "
                                                  f"change; allowed: fl.clients_per_round >= {need}")


def check_strategy_args(name: str, args: dict, field: str = "fl.strategy_args", unlisted: tuple[str, ...] = ()
                        ) -> None:
    """Every key of `fl.strategy_args` is a keyword argument of the strategy (unless it takes
    **kwargs) and every number is finite; a strategy given as an object takes none."""
    if not args:
        return
    target = STRATEGIES.get(name)
    bad = [k for k in args if not isinstance(k, str)]
    if bad:
        raise ConfigError(field, f"argument names must be strings, got {bad[0]!r}")
    for k, v in args.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{field}.{k}", f"must be a finite number, got {v}")
    if not callable(target):
        raise ConfigError(field, f"'{name}' is a strategy object, not a class or factory: it takes no arguments")
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return  # no signature to check against
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    unknown = [k for k in args if k not in accepted]
    if unknown:
        allowed = [p for p in accepted if p not in unlisted]  # arguments the caller sets itself
        hint = ""
        if isinstance(unknown[0], str) and ":" in unknown[0]:  # YAML reads {mu:0.1} as one key
            k, v = unknown[0].split(":", 1)
            hint = f" (a mapping needs a space after each colon: {{{k}: {v}}}, quoted on the command line)"
        raise ConfigError(field, f"'{unknown[0]}' is not an argument of {name}{hint}; allowed: {', '.join(allowed)}")
    for k, v in args.items():
        problem = _value_problem(params[k].annotation, v, k if str(target.__module__).startswith("flwr.") else "")
        if problem:
            raise ConfigError(f"{field}.{k}", problem)


def check_instance(name: str, num_clients: int, clients_per_round: int) -> None:
    """A strategy given as an object keeps the sampling it was built with (fedattack sets
    fraction_train, min_train_nodes and min_available_nodes only on a class or factory): it must
    sample fl.clients_per_round of the fl.num_clients clients, as the run's header and report say,
    and wait for no more clients than exist (Flower would wait for them forever)."""
    target = STRATEGIES.find(name)
    if not isinstance(target, fs.Strategy) or not hasattr(target, "fraction_train"):
        return
    n = num_clients

    def sampled(fraction: float, least: int) -> int:  # Flower's FedAvg.configure_train/configure_evaluate
        return max(int(n * fraction), least) if fraction else 0

    least = getattr(target, "min_train_nodes", 0)
    train = sampled(target.fraction_train, least)
    if train != clients_per_round:
        raise ConfigError("fl.clients_per_round", f"'{name}' is a strategy object, which keeps the sampling it was "
                                                  f"built with: {train} of fl.num_clients={n} clients per round "
                                                  f"(fraction_train={target.fraction_train:g}, min_train_nodes="
                                                  f"{least}); allowed: fl.clients_per_round={train}, or name its "
                                                  "class or a factory, which fedattack configures from fl.*")
    wait = max(getattr(target, "min_available_nodes", 0), train,
               sampled(getattr(target, "fraction_evaluate", 0.0), getattr(target, "min_evaluate_nodes", 0)))
    if wait > n:
        raise ConfigError("fl.num_clients", f"'{name}' is a strategy object that waits for {wait} clients "
                                            f"(min_available_nodes, min_train_nodes or min_evaluate_nodes) where "
                                            f"the federation has {n}; allowed: fl.num_clients >= {wait}")


def check_flower_build(name: str, args: dict, field: str = "fl.strategy_args") -> None:
    """Build one of Flower's own strategies with `args` once, so that its own checks
    (FedTrimmedAvg's beta, QFedAvg's required client_learning_rate) refuse them before anything
    runs; a strategy of the user's own is not built here (building it may cost or act)."""
    target = STRATEGIES.find(name)
    if not (inspect.isclass(target) and str(target.__module__).startswith("flwr.")):
        return
    try:
        with quiet_logs("flwr"):  # FedProx warns when built without proximal_mu
            target(**args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(field, f"{name} refuses these arguments: {first_line(exc)}") from None


# the ranges of Flower's strategy arguments that Flower itself does not check: (low, high, words)
FLOWER_RANGES: dict[str, tuple[float, float, str]] = {
    "num_malicious_nodes": (0, math.inf, ">= 0"), "num_nodes_to_select": (1, math.inf, ">= 1"),
    "beta_1": (0, 1, "0 to 1"), "beta_2": (0, 1, "0 to 1"), "server_momentum": (0, 1, "0 to 1"),
    "eta": (0, math.inf, ">= 0"), "eta_l": (0, math.inf, ">= 0"), "tau": (0, math.inf, ">= 0"),
    "server_learning_rate": (0, math.inf, ">= 0"), "q": (0, math.inf, ">= 0"),
    "client_learning_rate": (0, math.inf, ">= 0"), "proximal_mu": (0, math.inf, ">= 0"),
}


def _value_problem(annotation: Any, value: Any, name: str = "") -> str | None:
    """Why a config value does not fit a strategy argument's annotation (None if it does, or
    where the annotation says nothing checkable)."""
    if "Callable" in str(annotation):
        return ("takes a function, which a config cannot give; build the strategy in a module of your own "
                "(fl.strategy=module:factory)")
    expected = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}.get(annotation)
    if expected is None:
        return None
    if not isinstance(value, expected) or (annotation is not bool and isinstance(value, bool)):
        return f"must be {article(annotation.__name__)}, got {value!r}"
    if name not in FLOWER_RANGES:
        return None
    low, high, words = FLOWER_RANGES[name]
    return None if low <= value <= high else f"must be {words}, got {value!r}"
