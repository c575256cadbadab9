"""What the server configured for local training, as the audit replays it: `TrainingProtocol`.

The server knows the protocol because it set it: as fixed values in its ServerApp, or as
entries of the train ConfigRecord its strategy sends every round (`config_keys` names them;
every app names them differently). For each reply the protocol becomes the Observation's
`fedattack.threat.Protocol`, with the step count the client took: `local_steps` when the
protocol fixes steps, else `local_epochs * ceil(num_examples / batch_size)` from the example
count the client reports.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fedattack.config import plugin_section, proximal_mu
from fedattack.defenses import DEFENSES
from fedattack.errors import ConfigError
from fedattack.schema import Config
from fedattack.threat import DefenseSetting, Protocol

OPTIMIZERS = ("sgd", "adam")
NUMERIC = {"lr": float, "local_epochs": int, "local_steps": int, "batch_size": int, "momentum": float,
           "weight_decay": float, "proximal_mu": float}


@dataclass(frozen=True, kw_only=True)
class TrainingProtocol:
    """The local training the server configured, as the audit's attacks replay it.

    Parameters
    ----------
    lr : Optional[float] (default: None)
        The clients' local learning rate.
    local_epochs : Optional[int] (default: None)
        Passes over each client's data per round. The step count is then
        `local_epochs * ceil(num_examples / batch_size)`, with the example count each client
        reports (the strategy's `weighted_by_key` metric).
    local_steps : Optional[int] (default: None)
        Local optimizer steps per round, when the clients take a fixed number of steps
        instead of whole epochs (set one of `local_epochs` and `local_steps`; where both are
        known, the step count is `local_steps`).
    batch_size : Optional[int] (default: None)
        The clients' local batch size.
    momentum : float (default: 0.0)
        Momentum of the clients' SGD.
    optimizer : str (default: "sgd")
        The clients' local optimizer: "sgd" or "adam" (torch.optim semantics).
    weight_decay : float (default: 0.0)
        L2 weight decay of the clients' optimizer.
    nesterov : bool (default: False)
        Nesterov momentum (SGD).
    proximal_mu : float (default: 0.0)
        FedProx's mu: the clients add (mu/2)||w - w_global||^2 to their loss (Flower's FedProx
        sends it as "proximal-mu": `config_keys={"proximal_mu": "proximal-mu"}`).
    config_keys : Mapping[str, str] (default: {})
        Fields read every round from the train ConfigRecord the strategy sends, as
        `{field: key}`, e.g. `{"lr": "lr", "local_epochs": "local-epochs"}`. The value found
        there replaces the one given above; a key the record lacks, or a value of the wrong type
        (2.5 epochs, the string "false"), stops the run at that round, before the clients
        train, naming the key.
    defenses : Sequence[tuple[str, Mapping]] (default: ())
        Client-side defenses in force, as (fedattack defense name, parameters): adaptive
        attacks model them. The protocol is public in this threat model.
    """

    lr: float | None = None
    local_epochs: int | None = None
    local_steps: int | None = None
    batch_size: int | None = None
    momentum: float = 0.0
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    nesterov: bool = False
    proximal_mu: float = 0.0
    config_keys: Mapping[str, str] = field(default_factory=dict)
    defenses: Sequence[tuple[str, Mapping[str, Any]]] = ()

    @classmethod
    def of_config(cls, cfg: Config, *, from_train_config: bool = False) -> "TrainingProtocol":
        """The protocol of a fedattack config (`client.*` and its defenses); with
        `from_train_config`, read back every round from the train config a fedattack server
        sends (keys as fedattack.client.app.train_config writes them)."""
        c = cfg.client
        keys = {}
        if from_train_config:
            keys = {"lr": "lr", "batch_size": "batch-size", "momentum": "momentum",
                    **({"local_steps": "local-steps"} if c.local_steps > 0 else {"local_epochs": "local-epochs"}),
                    **({"proximal_mu": "proximal-mu"} if proximal_mu(cfg) or cfg.fl.strategy == "fedprox" else {})}
        defenses = tuple(DefenseSetting(d, asdict(cfg.defense(d))) for d in c.defenses)
        return cls(lr=c.lr, local_steps=c.local_steps or None, local_epochs=c.local_epochs, batch_size=c.batch_size,
                   momentum=c.momentum, optimizer=c.optimizer, weight_decay=c.weight_decay, nesterov=c.nesterov,
                   proximal_mu=proximal_mu(cfg), config_keys=keys, defenses=defenses)

    def __post_init__(self) -> None:
        names = [f.name for f in fields(self) if f.name not in ("config_keys", "defenses")]
        if not isinstance(self.config_keys, Mapping):
            raise ConfigError("protocol.config_keys", f"expected a mapping {{field: ConfigRecord key}}, e.g. "
                                                      f'{{"lr": "lr"}}, got {self.config_keys!r}')
        for name, key in dict(self.config_keys).items():
            if name not in names:
                raise ConfigError("protocol.config_keys", f"unknown field '{name}'; allowed: {', '.join(names)}")
            if not isinstance(key, str) or not key:
                raise ConfigError(f"protocol.config_keys.{name}", f"expected a ConfigRecord key, got {key!r}")
        keyed = set(self.config_keys)
        for name in ("lr", "batch_size"):
            if getattr(self, name) is None and name not in keyed:
                raise ConfigError(f"protocol.{name}", "not given; set it, or name its key in config_keys")
        if self.local_epochs is None and self.local_steps is None and not keyed & {"local_epochs", "local_steps"}:
            raise ConfigError("protocol.local_epochs", "set local_epochs or local_steps (or name one in config_keys)")
        self._check_values({n: getattr(self, n) for n in names})
        if not isinstance(self.nesterov, bool):
            raise ConfigError("protocol.nesterov", f"expected True or False, got {self.nesterov!r}")
        _check_defenses(self.defenses)

    def _check_values(self, values: dict[str, Any], where: str = "") -> None:
        """Type and range checks; `where` says where a value came from (a ConfigRecord key)."""
        def name(n: str) -> str:
            return f"protocol.{n}" + (f" (train config '{self.config_keys[n]}')" if where and n in self.config_keys
                                      else "")
        for n, kind in NUMERIC.items():
            v = values.get(n)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
                raise ConfigError(name(n), f"expected {'an integer' if kind is int else 'a number'}, got {v!r}")
            if not math.isfinite(v):
                raise ConfigError(name(n), f"must be a finite number, got {v}")
        for n, lo, open_ in (("lr", 0, True), ("batch_size", 1, False), ("local_epochs", 1, False),
                             ("local_steps", 1, False), ("weight_decay", 0, False), ("proximal_mu", 0, False)):
            v = values.get(n)
            if v is not None and (v < lo or (open_ and v == lo)):
                raise ConfigError(name(n), f"must be {'>' if open_ else '>='} {lo}, got {v}")
        m = values.get("momentum")
        if m is not None and not 0 <= m < 1:
            raise ConfigError(name("momentum"), f"must be in [0, 1), got {m}")
        if values.get("optimizer") is not None and values["optimizer"] not in OPTIMIZERS:
            raise ConfigError(name("optimizer"), f"unknown value '{values['optimizer']}'; allowed: "
                                                 f"{', '.join(OPTIMIZERS)}")
        if m and values.get("optimizer") not in (None, "sgd"):
            raise ConfigError(name("momentum"), f"is sgd's; {values['optimizer']} keeps its own moment estimates "
                                                "(allowed: momentum=0, or optimizer='sgd')")

    def values(self, config: Mapping[str, Any] | None) -> dict[str, Any]:
        """The protocol's fields for one message: given values, replaced by the `config_keys`
        entries of its train config. Raises a ConfigError naming a key the config lacks."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("config_keys", "defenses")}
        config = config or {}
        for name, key in self.config_keys.items():
            if key not in config:  # a value given above would be a guess at what the clients did
                have = ", ".join(sorted(config)) or "nothing"
                raise ConfigError(f"protocol.config_keys.{name}", f"the train ConfigRecord has no '{key}' "
                                                                  f"(it has: {have})")
            out[name] = _from_config(name, key, config[key])
        self._check_values(out, where="config")
        return out

    def check(self, config: Mapping[str, Any] | None) -> None:
        """Fail now, naming the key, if a round with this train config could not be replayed."""
        self.values(config)

    def protocol(self, config: Mapping[str, Any] | None, num_examples: int) -> Protocol:
        """The Observation's Protocol for a reply to a message with train config `config`."""
        v = self.values(config)
        batch = int(v["batch_size"])
        if v["local_steps"] is not None:
            steps, epochs = int(v["local_steps"]), int(v["local_epochs"] or 1)
        else:
            epochs = int(v["local_epochs"])
            steps = epochs * max(1, math.ceil(max(1, num_examples) / batch))
        return Protocol(lr=float(v["lr"]), local_steps=steps, local_epochs=epochs, batch_size=batch,
                        num_examples=int(num_examples), momentum=float(v["momentum"]), defenses=self.settings(),
                        optimizer=str(v["optimizer"]), weight_decay=float(v["weight_decay"]),
                        nesterov=bool(v["nesterov"]), proximal_mu=float(v["proximal_mu"]))

    def settings(self) -> tuple[DefenseSetting, ...]:
        return tuple(d if isinstance(d, DefenseSetting) else DefenseSetting(str(d[0]), dict(d[1]))
                     for d in self.defenses)

    def describe_defenses(self) -> str:
        """'none' or e.g. 'clip(bound=1.0)+gaussian(sigma=0.01)' for report rows."""
        parts = []
        for d in self.settings():
            args = ",".join(f"{k}={v}" for k, v in d.params.items())
            parts.append(f"{d.name}({args})" if args else d.name)
        return "+".join(parts) or "none"

    def as_dict(self) -> dict[str, Any]:
        """For the run directory's config.yaml."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("config_keys", "defenses")}
        out["config_keys"] = dict(self.config_keys)
        out["defenses"] = [{"name": d.name, **d.params} for d in self.settings()]
        return out


def _from_config(name: str, key: str, raw: Any) -> Any:
    """Field `name`'s value from the train config's entry `key`, refused where it would have to be
    bent to fit (2.7 epochs are not 2, the string 'false' is not False)."""
    def refuse(what: str) -> ConfigError:
        return ConfigError(f"protocol.{name}", f"the train config's '{key}' is {raw!r}, not {what}")
    if name in NUMERIC:
        kind = NUMERIC[name]
        try:
            v = float(raw) if not isinstance(raw, bool) else math.nan
        except (TypeError, ValueError):
            v = math.nan
        if math.isnan(v) or (kind is int and not v.is_integer()):
            raise refuse("an integer" if kind is int else "a number")
        return kind(v)
    if name == "nesterov":
        if isinstance(raw, bool) or raw in (0, 1):
            return bool(raw)
        raise refuse("True or False")
    if not isinstance(raw, str):
        raise refuse("a string")
    return raw


def _check_defenses(defenses: Any) -> None:
    """Each defense a (registered name or module:attr, parameters) pair whose parameters its
    config section accepts: checked as `client.defenses` and its section are."""
    if isinstance(defenses, (str, Mapping)) or not isinstance(defenses, Sequence):
        raise ConfigError("protocol.defenses", f"expected a sequence of (defense name, {{parameter: value}}) pairs, "
                                               f"got {defenses!r}")
    for d in defenses:
        if isinstance(d, DefenseSetting):
            name, params = d.name, d.params
        elif (isinstance(d, Sequence) and not isinstance(d, str) and len(d) == 2 and isinstance(d[0], str)
              and isinstance(d[1], Mapping)):
            name, params = d
        else:
            raise ConfigError("protocol.defenses", f"expected (defense name, {{parameter: value}}) pairs, e.g. "
                                                   f'("gaussian", {{"sigma": 0.01}}), got {d!r}')
        try:  # the defense's own section; how many clients a round it needs is the deployment's to know
            plugin_section(DEFENSES, name, dict(params))
        except ConfigError as exc:
            raise ConfigError("protocol.defenses", exc.message if exc.field == "client.defenses" else str(exc)) from None
