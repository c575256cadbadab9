"""Loading a config: YAML file + dotted `key=value` overrides -> a validated `Config`.

The types are in fedattack.schema. Validation is one pass over the loaded config: each
registry checks its own field (an unknown attack is the attack registry's ConfigError,
naming `audit.attacks`), each plug-in's parameters check themselves (`validate(name)`), and
the checks of fedattack.validate cover the rest; every error is one line naming the field.
"""

from __future__ import annotations

import copy
import json
import math
import re
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from fedattack.attacks import ATTACKS, needing_malicious_server
from fedattack.attacks.labels import LABELS
from fedattack.data import DATASETS, PARTITIONERS
from fedattack.data.hf import is_hf
from fedattack.defenses import DEFENSES, secure_aggregation
from fedattack.errors import ConfigError
from fedattack.models import ACTIVATIONS, INITIALIZERS, MODELS, check_width
from fedattack.models.generator import check_checkpoint
from fedattack.schema import SECTIONS, Config
from fedattack.strategies import (STRATEGIES, check_flower_build, check_instance, check_replies,
                                  check_strategy_args)
from fedattack.validate import check_between, check_choice, check_range, check_seed, first_repeat

# shipped inside the package (an installed wheel has it too); configs/default.yaml at the top of
# the repository is the same file, the documented example (a test keeps them identical)
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


# the strategy arguments fedattack sets from fl.* (fedattack.server.strategies.build_strategy)
PARTICIPATION_ARGS = {"fraction_train": "fl.clients_per_round and fl.num_clients",
                      "min_train_nodes": "fl.clients_per_round", "min_available_nodes": "fl.num_clients"}
# the record keys fedattack's clients reply under, which a strategy's arguments may not change
RECORD_KEYS = {"weighted_by_key": "num-examples", "arrayrecord_key": "arrays", "configrecord_key": "config"}
MAX_THREADS = 1024  # torch threads one process may ask for (absurd counts crash torch's thread pool)


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (default: configs/default.yaml), apply overrides, validate."""
    raw = read_yaml(path if path is not None else DEFAULT_CONFIG)
    return from_dict(apply_overrides(raw, overrides or []))


def from_json(text: str) -> Config:
    return from_dict(json.loads(text))


def from_dict(raw: dict) -> Config:
    """Build and validate a Config from a nested dict (as loaded from YAML)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("config", f"the top level must be a mapping of sections, got {_kind(raw)}")
    bad = [k for k in raw if not isinstance(k, str)]
    if bad:
        raise ConfigError(str(bad[0]), "unknown section: section names are words (seed, data, fl, ...)")
    cfg = Config()
    listed_attacks = _listed(raw, "audit", "attacks")
    listed_defenses = _listed(raw, "client", "defenses")
    # a plug-in given by import path registers itself on import: its section may use that name
    aliases = {**_aliases(ATTACKS, listed_attacks), **_aliases(DEFENSES, listed_defenses)}
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "seed":
            cfg.seed = _coerce(value, int, "seed")
        elif key in SECTIONS:
            setattr(cfg, key, _build_section(SECTIONS[key], value, key))
        else:
            sections[key] = value
    for key, value in sections.items():
        name = aliases.get(key, key)
        if name in ATTACKS.names() or name in listed_attacks:
            cfg.attack_params[name] = _build_section(ATTACKS.get(name).params, value, key)
        elif name in DEFENSES.names() or name in listed_defenses:
            cfg.defense_params[name] = _build_section(DEFENSES.get(name).params, value, key)
        else:
            allowed = ["seed", *SECTIONS, "<attack name>", "<defense name>"]
            raise ConfigError(str(key), f"unknown section; allowed: {', '.join(allowed)}")
    validate(cfg)
    return cfg


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(
        type(value), type(value).__name__) + f" ({value!r})"[:60]


def _listed(raw: dict, section: str, key: str) -> list:
    """The names listed at raw[section][key], as given (checked later)."""
    node = raw.get(section)
    value = node.get(key) if isinstance(node, dict) else None
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _section_name(registry: Any, name: str) -> str:
    """The config section of a listed plug-in: its own name (`mine` for `mypkg.attacks:mine`)."""
    own = getattr(registry.get(name), "name", None) if ":" in name else name
    return own if isinstance(own, str) else name


def listed_twice(registry: Any, listed: list) -> tuple[str, str] | None:
    """Where `listed` names one plug-in twice, by the same name or by its name and its import
    path (`mine` and `mypkg.attacks:mine`): what was listed, in words, and its section; None
    where each plug-in is listed once."""
    sections = [_section_name(registry, name) for name in listed]
    twice = first_repeat(sections)
    if twice is None:
        return None
    given = [name for name, section in zip(listed, sections) if section == twice][:2]
    said = f"'{given[0]}' is listed twice" if given[0] == given[1] else \
        f"'{given[0]}' and '{given[1]}' name the same plug-in"
    return said, twice


def plugin_section(registry: Any, name: str, raw: Any) -> Any:
    """One plug-in's parameter section (`raw`, a mapping), built and checked as a config's
    sections are: its own fields only, without a whole config's rules between sections."""
    section = _section_name(registry, name)
    params = _build_section(registry.get(name).params, raw, section)
    check = getattr(params, "validate", None)
    if check is not None:
        check(section)
    return params


def _aliases(registry: Any, listed: list) -> dict[str, str]:
    """section name -> listed import path, for listed `module:attr` plug-ins whose registered
    name differs (`mine` for `mypkg.attacks:mine`)."""
    out = {}
    for name in listed:
        own = _section_name(registry, name)  # a path is imported: a ConfigError names the field
        if own != name:
            out[own] = name
    return out


class _Loader(yaml.SafeLoader):
    """YAML 1.2's booleans: only true and false. PyYAML's YAML 1.1 also reads yes/no/on/off as
    booleans, so `audit.adaptive=on` (a word among off/on/both) would arrive as True. A key
    given twice in one mapping is an error (YAML 1.2), not the last one silently kept."""

    def construct_document(self, node):
        _no_repeated_keys(node, ())
        return super().construct_document(node)


def _no_repeated_keys(node: yaml.Node, path: tuple[str, ...]) -> None:
    """A ConfigError naming the first key given twice in one mapping, by its whole dotted path."""
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _no_repeated_keys(item, path)
    if not isinstance(node, yaml.MappingNode):
        return
    seen = set()
    for key_node, value_node in node.value:
        key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        if key is not None and key in seen:
            raise ConfigError(".".join((*path, key)), f"is given twice in one mapping (line "
                                                      f"{key_node.start_mark.line + 1}); allowed: each key once")
        seen.add(key)
        _no_repeated_keys(value_node, (*path, str(key)))


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in rules if tag != "tag:yaml.org,2002:bool"]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load_yaml(text: str) -> Any:
    """YAML text as Python values, with YAML 1.2's booleans (`_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if p.is_dir():
        raise ConfigError("config", f"{p} is a directory, not a YAML file")
    if not p.is_file():
        section = str(path).split(".", 1)[0]
        if "." in str(path) and p.suffix not in (".yaml", ".yml") and section in {f.name for f in fields(Config)}:
            raise ConfigError(str(path), f"an override needs a value, e.g. {path}=... (no config file of that name)")
        raise ConfigError("config", f"file not found: {p}")
    try:
        raw = load_yaml(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError("config", f"malformed YAML in {p}{where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("config", f"cannot read {p} ({exc.__class__.__name__})") from None
    if raw is None:  # an empty file (or only comments): the defaults
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("config", f"{p} must be a mapping of sections (seed:, data:, fl:, ...), got {_kind(raw)}")
    return raw


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(item, "an override must look like key=value, e.g. fl.rounds=5")
    key, _, text = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(item, "an override must look like key=value, e.g. fl.rounds=5")
    try:
        value = load_yaml(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    except ConfigError as exc:  # a key given twice inside the value: named from the override's key
        raise ConfigError(f"{key}.{exc.field}", exc.message) from None
    if isinstance(value, dict) and len(value) == 1 and None in value.values() and text.strip().endswith(":"):
        value = text.strip()  # `data.name=hf:` is a word ending in a colon, not the mapping {hf: null}
    return key.split("."), value


def defense_sections_in_force(cfg: Config, *, sweeping: bool = True) -> None:
    """A defense's section only where the defense is in force: `gaussian.sigma=0.5` without
    gaussian in client.defenses would run undefended. sweep.defense counts as in force only for
    `fedattack sweep` (`sweeping`); `run` and `attack` do not apply it."""
    swept = {cfg.sweep.defense} if cfg.sweep.defense and sweeping else set()
    idle = [d for d in cfg.defense_params if d not in set(cfg.client.defenses) | swept]
    if idle:
        d = idle[0]
        why = (f"; sweep.defense={d} applies it only under `fedattack sweep`" if cfg.sweep.defense == d
               else "")
        raise ConfigError(d, f"the defense '{d}' is configured but not in client.defenses "
                             f"({', '.join(cfg.client.defenses) or 'none'}){why}: add it (client.defenses=[...,{d}]) "
                             f"or drop its section")


def _secure_aggregation_fits(cfg: Config) -> None:
    """SecAgg+ (Flower's workflow) needs two clients a round, and each client as many neighbours
    as the shares that reconstruct a secret: checked here, not by a round that ends empty."""
    name = secure_aggregation(cfg.client.defenses)
    if name is None:
        return
    k = cfg.fl.clients_per_round
    if k < 2:
        raise ConfigError("fl.clients_per_round", f"secure aggregation ({name}) sums at least 2 clients' updates a "
                                                  f"round; allowed: 2 or more, got {k}")
    t = cfg.defense(name).reconstruction_threshold
    if isinstance(t, int) and t != 1 and t > k:
        raise ConfigError(f"{name}.reconstruction_threshold", f"as a count must be at most fl.clients_per_round "
                                                              f"({k}), got {t}; or a fraction in (0, 1]")


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


# -- types ------------------------------------------------------------------------

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


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Coerce a YAML value to a dataclass field's type (as typing.get_type_hints resolves it)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:  # Optional[X]: X's own message
            return _coerce(value, others[0], key)
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
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
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(key, f"must be a finite number, got {value}") from None
        if not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value}")
        return value
    if annotation is str:
        if isinstance(value, bool):  # YAML's true/false: the word, checked against the allowed values later
            return "true" if value else "false"
        if not isinstance(value, (str, int, float)):
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
        if value is None:
            return {}
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


# -- validation -------------------------------------------------------------------

def proximal_mu(cfg: Config) -> float:
    """FedProx's mu, the weight of the proximal term (mu/2)||w - w_global||^2 the clients add to
    their loss: `fl.strategy_args.proximal_mu` under `fl.strategy=fedprox` (Flower's FedProx
    sends it with every train message), else `client.proximal_mu`."""
    if cfg.fl.strategy == "fedprox":
        return float(cfg.fl.strategy_args.get("proximal_mu", 0.0))
    return float(cfg.client.proximal_mu)


def check_proximal(cfg: Config) -> None:
    if cfg.fl.strategy == "fedprox":
        if cfg.client.proximal_mu:
            raise ConfigError("client.proximal_mu", "fl.strategy=fedprox sends its own mu every round; set it as "
                                                    "fl.strategy_args={proximal_mu: ...} (allowed here: 0)")
        mu = cfg.fl.strategy_args.get("proximal_mu", 0.0)
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not mu >= 0:
            raise ConfigError("fl.strategy_args.proximal_mu", f"must be a number >= 0, got {mu!r}")
    if proximal_mu(cfg) and "dpsgd" in cfg.client.defenses:
        raise ConfigError("client.defenses", "dpsgd (Opacus) clips per-sample gradients, and FedProx's proximal "
                                             "term has none to clip; allowed: dpsgd with a proximal mu of 0")


def check_ray_address(address: Any) -> None:
    """`ray.address`: `auto`, a cluster's GCS as `host:port`, or Ray Client's `ray://host:port`
    (Ray's job-submission and dashboard address, `http://host:8265`, is not one to join)."""
    if not isinstance(address, str) or not address.strip():
        raise ConfigError("ray.address", f"expected auto, host:port or ray://host:port, got {address!r}")
    scheme, sep, rest = address.partition("://")
    if sep and scheme != "ray":
        raise ConfigError("ray.address", f"'{address}' is no Ray cluster address ({scheme}://); allowed: auto, "
                                         "host:port (the head's GCS, port 6379 by default) or ray://host:port "
                                         "(Ray Client)")
    host, colon, port = (rest if sep else address).rpartition(":")
    if address != "auto" and (not colon or not host or not port.isdigit()):
        raise ConfigError("ray.address", f"expected auto, host:port or ray://host:port, got '{address}'")


def check_sections(registry: Any, sections: dict[str, Any]) -> None:
    """Each plug-in section's own checks (its parameters' `validate(section name)`)."""
    for name, params in sections.items():
        check = getattr(params, "validate", None)
        if check is not None:
            check(_section_name(registry, name))


def check_client(cfg: Config) -> None:
    """The local training's values (`client.*`), as a config has them or a server's train
    config changed them (fedattack.client.app.with_protocol)."""
    check_range("client", "local_epochs", cfg.client.local_epochs, 0, lo_open=True)
    check_range("client", "local_steps", cfg.client.local_steps, 0)
    check_range("client", "batch_size", cfg.client.batch_size, 0, lo_open=True)
    check_range("client", "lr", cfg.client.lr, 0, lo_open=True)
    check_between("client", "momentum", cfg.client.momentum, 0, 1, hi_open=True)
    check_choice("client", "optimizer", cfg.client.optimizer, ["sgd", "adam"])
    check_range("client", "weight_decay", cfg.client.weight_decay, 0)
    check_range("client", "proximal_mu", cfg.client.proximal_mu, 0)
    if cfg.client.nesterov and (cfg.client.optimizer != "sgd" or cfg.client.momentum <= 0):
        raise ConfigError("client.nesterov", "needs client.optimizer=sgd and client.momentum > 0")
    if cfg.client.momentum and cfg.client.optimizer != "sgd":
        raise ConfigError("client.momentum", f"is sgd's; {cfg.client.optimizer} keeps its own moment estimates "
                                             "(allowed: client.momentum=0, or client.optimizer=sgd)")


def validate(cfg: Config) -> None:
    """Check every field; fill in default parameters of each configured attack and defense."""
    check_seed("seed", cfg.seed)
    DATASETS.check(cfg.data.name, also=("hf:NAME",))  # a Hugging Face dataset, named after "hf:"
    other = cfg.audit.calibration_data
    if other is not None and (not isinstance(other, str) or (other not in DATASETS.names() and ":" not in other)):
        raise ConfigError("audit.calibration_data", f"unknown dataset {other!r}; allowed: "
                                                    f"{', '.join(DATASETS.names())}, hf:NAME or module:attr")
    check_range("data", "image_size", cfg.data.image_size, 0, lo_open=True)
    if cfg.data.channels not in (None, 1, 3):
        raise ConfigError("data.channels", f"must be 1 or 3, got {cfg.data.channels}")
    check_between("data", "test_fraction", cfg.data.test_fraction, 0, 1, lo_open=True, hi_open=True)
    for key in ("image_key", "label_key"):
        if getattr(cfg.data, key) is not None and not is_hf(cfg.data.name):
            raise ConfigError(f"data.{key}", f"names a column of a Hugging Face dataset; allowed only with "
                                             f"data.name=hf:ID, not {cfg.data.name!r}")
    PARTITIONERS.check(cfg.partition.name)
    check_range("partition", "alpha", cfg.partition.alpha, 0, lo_open=True)
    check_range("partition", "shards_per_client", cfg.partition.shards_per_client, 0, lo_open=True)
    check_range("partition", "min_size", cfg.partition.min_size, 0, lo_open=True)
    MODELS.check(cfg.model.name)
    ACTIVATIONS.check(cfg.model.activation)
    INITIALIZERS.check(cfg.model.init)
    check_range("model", "init_scale", cfg.model.init_scale, 0, lo_open=True)
    check_width(cfg.model.name, cfg.model.width)
    check_range("fl", "num_clients", cfg.fl.num_clients, 0, lo_open=True)
    check_range("fl", "rounds", cfg.fl.rounds, 0, lo_open=True)
    check_range("fl", "clients_per_round", cfg.fl.clients_per_round, 0, lo_open=True)
    if cfg.fl.clients_per_round > cfg.fl.num_clients:
        raise ConfigError(
            "fl.clients_per_round", f"must be <= fl.num_clients ({cfg.fl.num_clients}), got {cfg.fl.clients_per_round}"
        )
    STRATEGIES.check(cfg.fl.strategy)
    if cfg.fl.strategy_args:
        check_strategy_args(cfg.fl.strategy, cfg.fl.strategy_args, unlisted=tuple(PARTICIPATION_ARGS))
        for arg, keys in PARTICIPATION_ARGS.items():
            if arg in cfg.fl.strategy_args:
                raise ConfigError(f"fl.strategy_args.{arg}", f"is set from {keys}, which the run's sampling, "
                                                             f"partitions and report follow; set {keys} instead")
        for arg, key in RECORD_KEYS.items():
            if cfg.fl.strategy_args.get(arg, key) != key:
                raise ConfigError(f"fl.strategy_args.{arg}", f"fedattack's clients use '{key}'; allowed: '{key}'")
        fraction = cfg.fl.strategy_args.get("fraction_evaluate", 0.0)
        if isinstance(fraction, (int, float)) and not 0 <= fraction <= 1:
            raise ConfigError("fl.strategy_args.fraction_evaluate",
                              f"is a share of the clients, 0 to 1; got {fraction}")
        least = cfg.fl.strategy_args.get("min_evaluate_nodes", 0)
        if isinstance(least, int) and not 0 <= least <= cfg.fl.num_clients:
            raise ConfigError("fl.strategy_args.min_evaluate_nodes", f"must be 0 to fl.num_clients "
                                                                     f"({cfg.fl.num_clients}), got {least}")
    check_replies(cfg.fl.strategy, cfg.fl.strategy_args or {}, cfg.fl.clients_per_round)
    check_flower_build(cfg.fl.strategy, cfg.fl.strategy_args or {})
    check_instance(cfg.fl.strategy, cfg.fl.num_clients, cfg.fl.clients_per_round)
    check_range("fl", "client_cpus", cfg.fl.client_cpus, 0, lo_open=True)
    check_range("fl", "client_gpus", cfg.fl.client_gpus, 0)
    check_range("fl", "evaluate_every", cfg.fl.evaluate_every, 0)
    check_range("fl", "timeout", cfg.fl.timeout, 0, lo_open=True)
    check_client(cfg)
    check_proximal(cfg)
    repeated = listed_twice(DEFENSES, cfg.client.defenses)
    if repeated is not None:
        raise ConfigError("client.defenses", f"{repeated[0]}; each defense applies once (its section, "
                                             f"e.g. {repeated[1]}.*, sets how)")
    for d in cfg.client.defenses:
        cfg.defense_params.setdefault(d, DEFENSES.get(d).params())
    for a in cfg.audit.attacks:
        cfg.attack_params.setdefault(a, ATTACKS.get(a).params())
    twice = listed_twice(ATTACKS, cfg.audit.attacks)
    if twice is not None:
        raise ConfigError("audit.attacks", f"{twice[0]}; each attack runs once per update (its "
                                           f"section, e.g. {twice[1]}.iterations, sets how)")
    check_choice("audit", "adaptive", cfg.audit.adaptive, ["off", "on", "both"])
    check_range("audit", "every", cfg.audit.every, 0)
    check_range("audit", "max_clients", cfg.audit.max_clients, 0)
    check_range("audit", "gpus_per_job", cfg.audit.gpus_per_job, 0)
    check_range("audit", "max_concurrent", cfg.audit.max_concurrent, 0, lo_open=True)
    check_range("audit", "threads_per_job", cfg.audit.threads_per_job, 1, MAX_THREADS)
    check_range("audit", "job_timeout", cfg.audit.job_timeout, 0)
    check_range("audit", "calibration_budget", cfg.audit.calibration_budget, 1, 1000)
    check_range("audit", "calibration_cases", cfg.audit.calibration_cases, 1, 100)
    check_range("audit", "calibration_images", cfg.audit.calibration_images, 1, 1000)
    check_range("audit", "calibration_iteration_factor", cfg.audit.calibration_iteration_factor, 1, 64)
    check_range("audit", "calibration_restart_factor", cfg.audit.calibration_restart_factor, 1, 64)
    check_range("audit", "calibration_samples", cfg.audit.calibration_samples, 1)
    weights = cfg.audit.lpips_weights
    if weights is not None and not (isinstance(weights, str) and Path(weights).expanduser().is_dir()):
        raise ConfigError("audit.lpips_weights", f"must be an existing folder holding LPIPS's weight files, got "
                                                 f"{weights!r}")
    LABELS.check(cfg.audit.labels, also=("auto",))  # auto: chosen among the methods per update
    if cfg.audit.labels != "auto":
        LABELS.get(cfg.audit.labels)  # a module:attr path is imported now and must be a label method
    check_between("audit", "success_ssim", cfg.audit.success_ssim, 0, 1)
    check_range("audit", "success_margin", cfg.audit.success_margin, 0)
    check_choice("server", "mode", cfg.server.mode, ["honest", "malicious"])
    if cfg.ray.num_cpus is not None:
        check_range("ray", "num_cpus", cfg.ray.num_cpus, 0, lo_open=True)
    if cfg.ray.address is not None:
        check_ray_address(cfg.ray.address)
    check_range("victim", "client", cfg.victim.client, 0, 2**31 - 1)
    if cfg.victim.indices is not None:
        if not cfg.victim.indices:
            raise ConfigError("victim.indices", "must list at least one dataset index")
        if any(i < 0 for i in cfg.victim.indices):
            raise ConfigError("victim.indices", "indices must be >= 0")
        twice = first_repeat(cfg.victim.indices)
        if twice is not None:
            raise ConfigError("victim.indices", f"{twice} is listed twice; each index is one of the victim's samples")
    check_sections(ATTACKS, cfg.attack_params)
    check_sections(DEFENSES, cfg.defense_params)
    defense_sections_in_force(cfg)  # after the values: a bad value names its own field first
    _secure_aggregation_fits(cfg)
    needs = needing_malicious_server(cfg.audit.attacks)
    if needs and cfg.server.mode != "malicious":
        raise ConfigError("server.mode", f"{needs[0]} needs a malicious server (one that changes the model it sends); "
                                         f"allowed: server.mode=malicious, or audit.attacks without {', '.join(needs)}")
    # a generator checkpoint loads now, not first at attack time; the section of an attack that is
    # not in audit.attacks needs none
    for name in cfg.audit.attacks:
        params = cfg.attack(name)
        if hasattr(params, "generator"):
            check_checkpoint(params.generator, f"{name}.generator")


__all__ = ["load", "from_dict", "from_json", "read_yaml", "apply_overrides", "validate", "check_client",
           "check_sections", "DEFAULT_CONFIG"]
