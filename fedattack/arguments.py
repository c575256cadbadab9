"""What the fedattack commands share on the command line: a YAML config and dotted
`key=value` overrides, --out and --quiet."""

from __future__ import annotations

import argparse

from fedattack.attacks import ATTACKS
from fedattack.config import load
from fedattack.errors import ConfigError, FedattackError
from fedattack.schema import Config


OUT_HELP = {"run": "run directory (default: runs/<timestamp>)",
            "attack": "run directory for the table's results and report (default: none is written)",
            "sweep": "sweep directory (default: runs/sweep-<timestamp>)"}


def add_config_args(p: argparse.ArgumentParser, command: str) -> None:
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="a YAML config and dotted overrides")
    p.add_argument("--out", help=OUT_HELP[command])
    p.add_argument("--quiet", action="store_true",
                   help="no live progress (the results, the notes, the answer and the report's path still print)")


def split_config_and_overrides(items: list[str]) -> tuple[str | None, list[str]]:
    """[CONFIG] key=value ... -> (the config file or None, the overrides)."""
    config, overrides = None, []
    for a in items:
        if "=" in a:
            overrides.append(a)
        elif config is None:
            config = a
        else:
            raise FedattackError(f"config: only one config file may be given, got '{config}' and '{a}'")
    return config, overrides


# an override of a section or key that only other commands read would be ignored without a word
ONLY_FOR = {"sweep": ("sweep",), "victim": ("attack",),
            # `fedattack attack` trains one client once: the federation's rounds and strategy play no part
            **{f"fl.{key}": ("run", "sweep") for key in ("rounds", "clients_per_round", "strategy", "strategy_args",
                                                         "evaluate_every", "timeout")}}


def load_config(ns: argparse.Namespace, *, command: str) -> Config:
    """The validated config the parsed arguments name, for `fedattack <command>`."""
    config, overrides = split_config_and_overrides(ns.items)
    keys = [item.split("=", 1)[0].strip() for item in overrides]  # load() checks each override's form
    for key in keys:
        section = key.split(".", 1)[0]
        what, owners = (key, ONLY_FOR[key]) if key in ONLY_FOR else (f"{section}.* keys", ONLY_FOR.get(section))
        if owners is not None and command not in owners:
            run = " or ".join(f"`fedattack {c}`" for c in owners)
            raise FedattackError(f"{key}: {what} {'is' if what == key else 'are'} read by {run} only, not by "
                                 f"`fedattack {command}` (drop the override or run {run})")
    cfg = load(config, overrides)
    listed = {id(ATTACKS.find(a)) for a in cfg.audit.attacks}
    for key in keys:  # a setting of an attack that does not run is a typo in the list, or a forgotten one
        section, _, param = key.partition(".")
        if param and section in ATTACKS.names() and id(ATTACKS.get(section)) not in listed:
            raise ConfigError(key, f"{section} is not in audit.attacks ({', '.join(cfg.audit.attacks) or 'none'}): "
                                   f"add it (audit.attacks=[...,{section}]) or drop the setting")
    return cfg
