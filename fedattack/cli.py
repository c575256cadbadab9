"""The `fedattack` command.

    fedattack run [CONFIG] [key=value ...] [--out DIR]       an audited simulation
    fedattack attack [CONFIG] [key=value ...] [--out DIR]    one update, every attack, a table
    fedattack sweep [CONFIG] [key=value ...] [--out DIR]     one audited run per value of a config key
    fedattack train-generator [CONFIG] [key=value ...] --out PATH
    fedattack list attacks|defenses|datasets|models|strategies|labels|partitioners
    fedattack report RUN_DIR                                 print and re-render a run's (or a sweep's) report

Bad input exits with code 2 and one line naming the field and what is allowed, before
anything is started or written. SIGINT and SIGTERM stop a command cleanly (fedattack.shutdown):
finished results and the report are kept, and the exit code is 130 or 143.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from fedattack import shutdown, sweep, train_generator
from fedattack.arguments import add_config_args, load_config
from fedattack.attacks import ATTACKS
from fedattack.attacks.calibrate import calibrated_settings
from fedattack.attacks.labels import LABELS
from fedattack.data import DATASETS, PARTITIONERS
from fedattack.defenses import DEFENSES
from fedattack.errors import FedattackError
from fedattack.gradient_attack import run_attack
from fedattack.models import MODELS
from fedattack.registry import Registry
from fedattack.report.console import Progress, library_logs
from fedattack.report.screenshot import check_target, screenshot
from fedattack.report.store import check_out, default_out_dir, load_run, write_report
from fedattack.server.dispatch import abandoned_threads
from fedattack.simulate import run
from fedattack.strategies import STRATEGIES
from fedattack.text import counted

LISTINGS: dict[str, Registry] = {"attacks": ATTACKS, "defenses": DEFENSES, "datasets": DATASETS, "models": MODELS,
                                 "strategies": STRATEGIES, "labels": LABELS, "partitioners": PARTITIONERS}


def cmd_run(ns: argparse.Namespace) -> int:
    cfg = load_config(ns, command="run")
    out = ns.out or default_out_dir()
    check_out(out)
    progress = Progress(quiet=ns.quiet)
    with library_logs(ns.verbose):
        summary = run(cfg, out_dir=out, progress=progress, verbose=ns.verbose)
    progress.summary_table(summary)
    progress.answer(f"report: {Path(out) / 'report.html'}")
    if summary.client_errors and not any(r.replies for r in load_run(out).rounds):  # no client ever trained
        print(f"fedattack: every client update failed (the first: {summary.client_error})", file=sys.stderr)
        return 1
    return 0


def cmd_attack(ns: argparse.Namespace) -> int:
    cfg = load_config(ns, command="attack")
    check_out(ns.out)
    progress = Progress(quiet=ns.quiet)
    with library_logs(getattr(ns, "verbose", False)):  # the table below says what Flower's log lines would
        run_attack(cfg, out_dir=ns.out, progress=progress)
    if ns.out:
        progress.answer(f"report: {Path(ns.out) / 'report.html'}")
    return 0


def cmd_list(ns: argparse.Namespace) -> int:
    reg = LISTINGS[ns.kind]
    if ns.kind == "labels":  # the default, which picks among the registered methods
        print(f"{'auto':16s} idlg for one image, bias for more (the default)")
    for name in reg.names():
        print(f"{name:16s} {reg.doc(name)}")
        if ns.kind != "attacks":
            continue
        space = calibrated_settings(name)  # what audit.calibrate may change
        if space:
            print(f"{'':16s} calibrates: {', '.join(space)}")
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    run_dir = Path(ns.run_dir)
    if ns.screenshot:
        check_target(ns.screenshot)
    if sweep.is_sweep_dir(run_dir):
        sweep.rerender(run_dir)
        if ns.screenshot:
            Progress().print(f"screenshot: {screenshot(run_dir / 'sweep.html', ns.screenshot)}")
        return 0
    run = load_run(run_dir)
    for line in run.cut:
        print(f"fedattack: warning: {line}", file=sys.stderr)
    summary = write_report(run_dir, run)
    progress = Progress()
    acc = "-" if summary.final_test_acc is None else f"{summary.final_test_acc:.3f}"
    progress.print(f"{run_dir}: server mode {summary.header.server_mode}, defense {summary.defense}, "
                   f"{counted(summary.rounds, 'round')}, final test accuracy {acc}"
                   + (" (interrupted)" if summary.interrupted is not None else ""))
    progress.summary_table(summary)
    progress.answer(f"report: {run_dir / 'report.html'}")
    if ns.screenshot:
        progress.print(f"screenshot: {screenshot(run_dir / 'report.html', ns.screenshot)}")
    return 0


def _report_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="the directory of a finished (or stopped) run or sweep")
    p.add_argument("--screenshot", metavar="PNG", help="also render report.html to this PNG (headless Chromium)")


def _run_parser(p: argparse.ArgumentParser) -> None:
    add_config_args(p, "run")
    p.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")


def _attack_parser(p: argparse.ArgumentParser) -> None:
    add_config_args(p, "attack")
    p.add_argument("--verbose", action="store_true", help="show the libraries' logs (Flower's, Ray's)")


# subcommand -> (help, add arguments, handler)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "run": ("an audited federated simulation", _run_parser, cmd_run),
    "attack": ("attack one simulated client update with every configured attack", _attack_parser, cmd_attack),
    "list": ("list registered plug-ins",
             lambda p: p.add_argument("kind", choices=list(LISTINGS), help=f"one of: {', '.join(LISTINGS)}"),
             cmd_list),
    "report": ("print and re-render the report of a finished run or sweep", _report_parser, cmd_report),
    **sweep.COMMANDS,
    **train_generator.COMMANDS,
}


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (the usage itself is in --help), exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="fedattack", description="Audit what a federated deployment leaks.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)  # errors name their --help
    commands = {}
    for name, (help_, add_args, handler) in COMMANDS.items():
        p = commands[name] = sub.add_parser(name, help=help_)
        add_args(p)
        p.set_defaults(handler=handler)
    ns, extra = parser.parse_known_args(argv)
    if extra and hasattr(ns, "items") and not any(a.startswith("-") for a in extra):
        ns.items += extra  # overrides after an option (`run --out DIR fl.rounds=2`) are overrides too
    elif extra:
        commands[ns.command].error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with shutdown.handling_signals():
            return ns.handler(ns)
    except FedattackError as exc:
        print(f"fedattack: error: {exc}", file=sys.stderr)
        return 2
    except shutdown.Stopped as exc:
        return exc.exit_code
    except KeyboardInterrupt:
        print("fedattack: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The console script: `main`, then exit. Where an abandoned attack is still computing in a
    thread, the process ends without finalizing the interpreter (native code running in a
    thread while it finalizes can abort the process after the results are written)."""
    try:
        code = main()
    except BrokenPipeError:  # `fedattack list models | head`: the reader left; nothing is lost
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    if abandoned_threads():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
