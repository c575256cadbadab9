"""Typed configuration: YAML file + dotted `key=value` overrides, validated with clear errors.

Sections are dataclasses. Besides the fixed sections, every registered attack and defense
owns a top-level section named after it (`dlg.optimizer=adam`, `gaussian.sigma=0.01`)
holding that plug-in's own parameter dataclass.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

from fedattack.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


@dataclass
class DataConfig:
    name: str = "lfw-subset"
    root: str | None = None
    image_size: int = 32
    channels: int | None = None  # None: the dataset's own (1 for grey, 3 for colour)
    download: bool = False
    test_fraction: float = 0.2  # held-out share for datasets without a test split
    image_key: str | None = None  # hf: datasets: image column (None: detected)
    label_key: str | None = None  # hf: datasets: label column (None: detected)


@dataclass
class PartitionConfig:
    name: str = "dirichlet"
    alpha: float = 0.5
    shards_per_client: int = 2
    min_size: int = 2
    classes_per_client: int = 2  # pathological
    class_assignment: str = "random"  # pathological: random | deterministic | first-deterministic


@dataclass
class ModelConfig:
    name: str = "lenet"
    activation: str = "sigmoid"
    init: str = "default"  # default | uniform (U(-init_scale, init_scale), DLG's choice)
    init_scale: float = 0.5
    width: int | None = None  # None: the architecture's own default


@dataclass
class FLConfig:
    num_clients: int = 8
    rounds: int = 3
    clients_per_round: int = 2
    strategy: str = "fedavg"
    strategy_args: dict = field(default_factory=dict)
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    evaluate_every: int = 1
    timeout: float = 600.0


@dataclass
class ClientConfig:
    local_epochs: int = 1
    local_steps: int = 2  # 0: run whole local epochs instead of a fixed number of steps
    batch_size: int = 2
    lr: float = 0.01
    momentum: float = 0.0
    defenses: list = field(default_factory=list)


@dataclass
class AuditConfig:
    attacks: list = field(default_factory=lambda: ["idlg", "dlg", "invgrad"])
    every: int = 1
    max_clients: int = 0  # 0: every sampled client
    gpus_per_job: float = 0.0
    max_concurrent: int = 2
    labels: str = "auto"
    adaptive: str = "off"  # off | on | both: defense-aware variants of attacks that support it
    success_ssim: float = 0.5
    save_images: bool = True
    threads_per_job: int = 1
    tf32: bool = False  # let attack jobs on a GPU use TF32 matmuls and convolutions


@dataclass
class VictimConfig:
    indices: list | None = None
    client: int = 0


@dataclass
class ServerConfig:
    mode: str = "honest"  # honest | malicious


@dataclass
class RayConfig:
    address: str | None = None
    num_cpus: int | None = None  # local instance: CPUs offered to clients (None: all cores)


@dataclass
class SweepConfig:
    defense: str | None = None
    param: str | None = None  # defaults to the defense's main parameter
    values: list = field(default_factory=list)
    parallel: int = 1


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "partition": PartitionConfig,
    "model": ModelConfig,
    "fl": FLConfig,
    "client": ClientConfig,
    "audit": AuditConfig,
    "victim": VictimConfig,
    "server": ServerConfig,
    "ray": RayConfig,
    "sweep": SweepConfig,
}


@dataclass
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    victim: VictimConfig = field(default_factory=VictimConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    attack_params: dict = field(default_factory=dict)  # attack name -> params dataclass
    defense_params: dict = field(default_factory=dict)  # defense name -> params dataclass

    # -- access ---------------------------------------------------------------
    def attack(self, name: str) -> Any:
        """Parameters of attack `name` (its defaults unless configured)."""
        if name not in self.attack_params:
            from fedattack.attacks import ATTACKS

            self.attack_params[name] = ATTACKS.get(name).params()
        return self.attack_params[name]

    def defense(self, name: str) -> Any:
        if name not in self.defense_params:
            from fedattack.defenses import DEFENSES

            self.defense_params[name] = DEFENSES.get(name).params()
        return self.defense_params[name]

    # -- serialization ----------------------------------------------------------
    def to_dict(self) -> dict:
        out: dict[str, Any] = {"seed": self.seed}
        for name in SECTIONS:
            out[name] = asdict(getattr(self, name))
        for name, p in sorted({**self.attack_params, **self.defense_params}.items()):
            out[name] = asdict(p)
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def copy(self) -> "Config":
        return copy.deepcopy(self)


# -- loading ----------------------------------------------------------------------

def _plugin_registries():
    from fedattack.attacks import ATTACKS
    from fedattack.defenses import DEFENSES

    return ATTACKS, DEFENSES


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Coerce a YAML value to a dataclass field's annotated type, or raise ConfigError."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {**vars(typing), **vars(types)}, {})  # noqa: S307 (our own annotations)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(key, f"expected {_type_name(annotation)}, got {value!r}")
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return str(value)
    if annotation is list or origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        if args:
            return [_coerce(v, args[0], key) for v in value]
        return list(value)
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        return dict(value)
    if annotation is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        return tuple(value)
    return value


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


def _build_section(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(prefix, f"expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for k, v in raw.items():
        if k not in names:
            raise ConfigError(f"{prefix}.{k}", f"unknown key; allowed: {', '.join(sorted(names)) or '(none)'}")
        kwargs[k] = _coerce(v, hints[k], f"{prefix}.{k}")
    return cls(**kwargs)


def from_dict(raw: dict) -> Config:
    """Build and validate a Config from a nested dict (as loaded from YAML)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config", "the top level must be a mapping of sections")
    attacks, defenses = _plugin_registries()
    cfg = Config()
    for key, value in raw.items():
        if key == "seed":
            cfg.seed = _coerce(value, int, "seed")
        elif key in SECTIONS:
            setattr(cfg, key, _build_section(SECTIONS[key], value, key))
        elif key in attacks.names() or (":" in key and key in ((raw.get("audit") or {}).get("attacks") or [])):
            cfg.attack_params[key] = _build_section(attacks.get(key).params, value, key)
        elif key in defenses.names() or (":" in key and key in ((raw.get("client") or {}).get("defenses") or [])):
            cfg.defense_params[key] = _build_section(defenses.get(key).params, value, key)
        else:
            allowed = ["seed", *SECTIONS, "<attack name>", "<defense name>"]
            raise ConfigError(str(key), f"unknown section; allowed: {', '.join(allowed)}")
    validate(cfg)
    return cfg


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(item, "an override must look like key=value, e.g. fl.rounds=5")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(item, "an override must look like key=value, e.g. fl.rounds=5")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = copy.deepcopy(raw) if raw else {}
    for item in overrides:
        path, value = parse_override(item)
        node = raw
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(".".join(path), f"'{part}' is not a section")
            node = child
        node[path[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError("config", f"file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("config", f"malformed YAML in {p}{where}") from None
    return raw or {}


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (default: configs/default.yaml), apply overrides, validate."""
    raw = read_yaml(path if path is not None else DEFAULT_CONFIG)
    return from_dict(apply_overrides(raw, overrides or []))


def from_json(text: str) -> Config:
    return from_dict(json.loads(text))


# -- validation -------------------------------------------------------------------

def _positive(cfg_value: float, key: str, allow_zero: bool = False) -> None:
    if cfg_value < 0 or (cfg_value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {cfg_value}")


def _choice(value: str, allowed: list[str], key: str) -> None:
    if value not in allowed:
        raise ConfigError(key, f"unknown value '{value}'; allowed: {', '.join(allowed)}")


def validate(cfg: Config) -> None:
    from fedattack.data import DATASETS, PARTITIONERS
    from fedattack.models import ACTIVATIONS, MODELS
    from fedattack.server.strategies import STRATEGIES

    attacks, defenses = _plugin_registries()
    _choice(cfg.data.name, DATASETS.names(), "data.name") if ":" not in cfg.data.name else None
    _positive(cfg.data.image_size, "data.image_size")
    if cfg.data.channels is not None and cfg.data.channels not in (1, 3):
        raise ConfigError("data.channels", f"must be 1 or 3, got {cfg.data.channels}")
    if not 0 < cfg.data.test_fraction < 1:
        raise ConfigError("data.test_fraction", f"must be in (0, 1), got {cfg.data.test_fraction}")
    _choice(cfg.partition.name, PARTITIONERS.names(), "partition.name")
    _positive(cfg.partition.alpha, "partition.alpha")
    _positive(cfg.partition.shards_per_client, "partition.shards_per_client")
    _positive(cfg.partition.min_size, "partition.min_size")
    if ":" not in cfg.model.name:
        _choice(cfg.model.name, MODELS.names(), "model.name")
    _choice(cfg.model.activation, sorted(ACTIVATIONS), "model.activation")
    _choice(cfg.model.init, ["default", "uniform"], "model.init")
    _positive(cfg.model.init_scale, "model.init_scale")
    if cfg.model.width is not None:
        _positive(cfg.model.width, "model.width")
    _positive(cfg.fl.num_clients, "fl.num_clients")
    _positive(cfg.fl.rounds, "fl.rounds")
    _positive(cfg.fl.clients_per_round, "fl.clients_per_round")
    if cfg.fl.clients_per_round > cfg.fl.num_clients:
        raise ConfigError(
            "fl.clients_per_round", f"must be <= fl.num_clients ({cfg.fl.num_clients}), got {cfg.fl.clients_per_round}"
        )
    if ":" not in cfg.fl.strategy:
        _choice(cfg.fl.strategy, STRATEGIES.names(), "fl.strategy")
    _positive(cfg.fl.client_cpus, "fl.client_cpus", allow_zero=True)
    _positive(cfg.fl.client_gpus, "fl.client_gpus", allow_zero=True)
    _positive(cfg.fl.evaluate_every, "fl.evaluate_every", allow_zero=True)
    _positive(cfg.fl.timeout, "fl.timeout")
    _positive(cfg.client.local_epochs, "client.local_epochs")
    _positive(cfg.client.local_steps, "client.local_steps", allow_zero=True)
    _positive(cfg.client.batch_size, "client.batch_size")
    _positive(cfg.client.lr, "client.lr")
    if not 0 <= cfg.client.momentum < 1:
        raise ConfigError("client.momentum", f"must be in [0, 1), got {cfg.client.momentum}")
    for d in cfg.client.defenses:
        if ":" not in d:
            _choice(d, defenses.names(), "client.defenses")
        cfg.defense(d)
    if not cfg.audit.attacks and cfg.audit.every:
        pass  # an empty attack list is a plain simulation
    for a in cfg.audit.attacks:
        if ":" not in a:
            _choice(a, attacks.names(), "audit.attacks")
        cfg.attack(a)
    _choice(cfg.audit.adaptive, ["off", "on", "both"], "audit.adaptive")
    _positive(cfg.audit.every, "audit.every", allow_zero=True)
    _positive(cfg.audit.max_clients, "audit.max_clients", allow_zero=True)
    _positive(cfg.audit.gpus_per_job, "audit.gpus_per_job", allow_zero=True)
    _positive(cfg.audit.max_concurrent, "audit.max_concurrent")
    _positive(cfg.audit.threads_per_job, "audit.threads_per_job")
    from fedattack.attacks.labels import LABELS

    if cfg.audit.labels != "auto":
        _choice(cfg.audit.labels, ["auto", *LABELS.names()], "audit.labels")
    if not 0 <= cfg.audit.success_ssim <= 1:
        raise ConfigError("audit.success_ssim", f"must be in [0, 1], got {cfg.audit.success_ssim}")
    _choice(cfg.server.mode, ["honest", "malicious"], "server.mode")
    if cfg.ray.num_cpus is not None:
        _positive(cfg.ray.num_cpus, "ray.num_cpus")
    if cfg.victim.indices is not None:
        if not cfg.victim.indices:
            raise ConfigError("victim.indices", "must list at least one dataset index")
        if any(i < 0 for i in cfg.victim.indices):
            raise ConfigError("victim.indices", "indices must be >= 0")
    for name, params in {**cfg.attack_params, **cfg.defense_params}.items():
        check = getattr(params, "validate", None)
        if check is not None:
            check(name)


def check_range(name: str, key: str, value: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> None:
    """Helper for plug-in params' validate(): raise a ConfigError naming `name.key`."""
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ConfigError(f"{name}.{key}", f"must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name}.{key}", f"must be <= {hi}, got {value}")


def check_choice(name: str, key: str, value: str, allowed: list[str]) -> None:
    _choice(value, allowed, f"{name}.{key}")


def replace(obj: Any, **changes: Any) -> Any:
    return dataclasses.replace(obj, **changes)


__all__ = ["Config", "load", "from_dict", "from_json", "apply_overrides", "check_range", "check_choice",
           "is_dataclass", "DEFAULT_CONFIG"]
