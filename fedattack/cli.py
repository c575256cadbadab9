"""The `fedattack` command.

    fedattack run [CONFIG] [key=value ...] [--out DIR]       an audited simulation
    fedattack attack [CONFIG] [key=value ...] [--out DIR]    one update, every attack, a table
    fedattack list attacks|defenses|datasets|models|strategies|labels|partitioners
    fedattack report RUN_DIR                                 print and re-render a run's report

Bad input exits with code 2 and one line naming the field and what is allowed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

from fedattack.errors import FedattackError


def default_out_dir() -> str:
    return str(Path("runs") / time.strftime("%Y%m%d-%H%M%S"))


def _split_config_and_overrides(args: list[str]) -> tuple[str | None, list[str]]:
    config, overrides = None, []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif config is None:
            config = a
        else:
            raise FedattackError(f"config: only one config file may be given, got '{config}' and '{a}'")
    return config, overrides


def _load(ns: argparse.Namespace):
    from fedattack.config import load

    config, overrides = _split_config_and_overrides(ns.items)
    return load(config, overrides)


def _check_out(out: str | None) -> None:
    if out and Path(out).exists() and any(Path(out).iterdir()):
        raise FedattackError(f"--out: {out} exists and is not empty; choose a new directory")


def cmd_run(ns: argparse.Namespace) -> int:
    from fedattack.report.console import Progress
    from fedattack.simulate import run

    cfg = _load(ns)
    out = ns.out or default_out_dir()
    _check_out(out)
    progress = Progress(quiet=ns.quiet)
    summary = run(cfg, out, progress, verbose=ns.verbose)
    progress.summary_table(summary)
    progress.print(f"report: {Path(out) / 'report.html'}")
    return 0


def cmd_attack(ns: argparse.Namespace) -> int:
    from fedattack.gradient_attack import run_attack
    from fedattack.report.console import Progress

    cfg = _load(ns)
    _check_out(ns.out)
    run_attack(cfg, ns.out, Progress(quiet=ns.quiet))
    return 0


def _listing(kind: str) -> list[tuple[str, str]]:
    from fedattack.attacks import ATTACKS
    from fedattack.attacks.labels import LABELS
    from fedattack.data import DATASETS, PARTITIONERS
    from fedattack.defenses import DEFENSES
    from fedattack.models import MODELS
    from fedattack.server.strategies import STRATEGIES

    reg = {"attacks": ATTACKS, "defenses": DEFENSES, "datasets": DATASETS, "models": MODELS,
           "strategies": STRATEGIES, "labels": LABELS, "partitioners": PARTITIONERS}[kind]
    return [(n, reg.doc(n)) for n in reg.names()]


def cmd_list(ns: argparse.Namespace) -> int:
    for name, doc in _listing(ns.kind):
        print(f"{name:16s} {doc}")
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    import json

    from fedattack.report.console import Progress
    from fedattack.report.html import render
    from fedattack.report.store import read_csv, summarize

    run_dir = Path(ns.run_dir)
    if not (run_dir / "leakage.csv").is_file():
        raise FedattackError(f"run_dir: {run_dir} is not a fedattack run directory (no leakage.csv)")
    old = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    summary = {**old, **summarize(read_csv(run_dir / "leakage.csv"), read_csv(run_dir / "rounds.csv"))}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    path = render(run_dir)
    progress = Progress()
    progress.print(f"{run_dir}: server mode {summary.get('server_mode', 'honest')}, defense {summary.get('defense')}, "
                   f"{summary.get('rounds')} rounds, final test accuracy {summary.get('final_test_acc')}")
    progress.summary_table(summary)
    progress.print(f"report: {path}")
    return 0


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("items", nargs="*", metavar="[CONFIG] key=value", help="a YAML config and dotted overrides")
    p.add_argument("--out", help="run directory (default: runs/<timestamp> for run)")
    p.add_argument("--quiet", action="store_true", help="no live progress")


def _run_parser(p: argparse.ArgumentParser) -> None:
    _add_config_args(p)
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")


# subcommand -> (help, add arguments, handler); other modules add theirs here
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "run": ("an audited federated simulation", _run_parser, cmd_run),
    "attack": ("attack one simulated client update with every configured attack", _add_config_args, cmd_attack),
    "list": ("list registered plug-ins",
             lambda p: p.add_argument("kind", choices=["attacks", "defenses", "datasets", "models", "strategies",
                                                       "labels", "partitioners"]), cmd_list),
    "report": ("print and re-render the report of a finished run",
               lambda p: p.add_argument("run_dir"), cmd_report),
}


def _register_extra_commands() -> None:
    import importlib

    for module in ("fedattack.sweep", "fedattack.generator"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        COMMANDS.update(getattr(mod, "COMMANDS", {}))


def main(argv: list[str] | None = None) -> int:
    _register_extra_commands()
    parser = argparse.ArgumentParser(prog="fedattack", description="Audit what a federated deployment leaks.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_, add_args, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        add_args(p)
        p.set_defaults(handler=handler)
    ns = parser.parse_args(argv)
    try:
        return ns.handler(ns)
    except FedattackError as exc:
        print(f"fedattack: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedattack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
