"""Run the benchmark modules and print their tables (`python -m benchmarks --help`)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import sys
import time
from pathlib import Path

import benchmarks


def available() -> list[str]:
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(benchmarks.__path__)
                  if m.name.startswith("bench_"))


def print_table(title: str, rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    cols: list[str] = []
    for r in rows:
        cols.extend(k for k in r if k not in cols)
    for c in cols:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*[f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols])
    Console().print(table)


RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    return f"{os.cpu_count()} CPU cores ({platform.machine()}), no GPU, torch {torch.__version__}"


def save(name: str, rows: list[dict], *, quick: bool, seconds: float, note: str = "", tag: str = "") -> Path:
    """benchmarks/results/NAME.json (NAME-TAG.json with a tag): the rows and how they were measured."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}{'-' + tag if tag else ''}.json"
    meta = {"benchmark": name, "command": f"python -m benchmarks {name}{' --quick' if quick else ''} --save"
                                          f"{' --tag ' + tag if tag else ''}",
            "date": time.strftime("%Y-%m-%d"), "machine": machine(), "quick": quick, "seconds": round(seconds, 1)}
    if tag:
        meta["tag"] = tag
    if note:
        meta["note"] = note
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=str) + "\n")
    return path


def json_problem(path: Path) -> str | None:
    """Why --json PATH could not be written once the benchmarks have run, or None."""
    if path.is_dir():
        return f"--json: {path} is a directory; give a file path, e.g. {path / 'rows.json'}"
    parent = path.parent
    if not parent.is_dir():
        return f"--json: {path}: directory {parent} does not exist; create it or give a path in an existing directory"
    if not os.access(path if path.exists() else parent, os.W_OK):
        return f"--json: {path}: not writable; give a path you can write"
    return None


def quick_save_problem(names: list[str], tag: str) -> str | None:
    """Why `--quick --save` must not write where it would, or None: a smoke run never replaces a
    full measurement (benchmarks/results/NAME.json is what docs/results.md shows)."""
    if not tag:
        return ("--quick: with --save it would replace the full measurement in benchmarks/results/NAME.json with a "
                "smoke run; add --tag TAG to save it as NAME-TAG.json, or use --json PATH instead of --save")
    for name in names:
        path = RESULTS / f"{name}-{tag}.json"
        try:
            full = path.is_file() and not json.loads(path.read_text())["meta"].get("quick")
        except (ValueError, KeyError, TypeError):
            full = False
        if full:
            return (f"--quick: with --save --tag {tag} it would replace the full measurement in "
                    f"benchmarks/results/{path.name} with a smoke run; choose another --tag, or use --json PATH")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help=f"which, or all alone (hours on a CPU): {', '.join(available())}")
    parser.add_argument("--quick", action="store_true", help="smaller cases, for a smoke run")
    parser.add_argument("--json", type=Path, help="also write all rows to this JSON file")
    parser.add_argument("--save", action="store_true",
                        help="write each benchmark's rows to benchmarks/results/NAME.json (what docs/results.md is "
                             "rendered from: python -m benchmarks.render_docs); with --quick only beside --tag, so a "
                             "smoke run never replaces a full measurement")
    parser.add_argument("--note", default="", help="with --save: how it was measured (e.g. what else ran), shown "
                                                   "above the table in docs/results.md")
    parser.add_argument("--tag", default="", help="with --save: keep these rows beside the benchmark's others, in "
                                                  "NAME-TAG.json (e.g. gpu, for a run on another machine)")
    ns = parser.parse_args(argv)
    if not ns.names:
        print(f"benchmarks: names: name one or more benchmarks, or all (hours on a CPU); allowed: "
              f"{', '.join(available())}", file=sys.stderr)
        return 2
    if "all" in ns.names and ns.names != ["all"]:
        print("benchmarks: names: all runs every benchmark; give it alone, or name the benchmarks without it",
              file=sys.stderr)
        return 2
    if (ns.note or ns.tag) and not ns.save:
        print(f"benchmarks: {'--note' if ns.note else '--tag'}: goes with --save (it labels the saved rows)",
              file=sys.stderr)
        return 2
    names = available() if ns.names == ["all"] else ns.names
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"benchmarks: unknown benchmark {unknown[0]}; allowed: {', '.join(available())}, or all alone",
              file=sys.stderr)
        return 2
    problem = json_problem(ns.json) if ns.json else None
    if not problem and ns.quick and ns.save:
        problem = quick_save_problem(names, ns.tag)
    if problem:
        print(f"benchmarks: {problem}", file=sys.stderr)
        return 2
    modules = {name: importlib.import_module(f"benchmarks.bench_{name}") for name in names}
    for name, mod in modules.items():
        try:  # a benchmark's own settings (environment variables) are checked before anything runs
            getattr(mod, "check", lambda quick: None)(ns.quick)
        except ValueError as exc:
            print(f"benchmarks: {name}: {exc}", file=sys.stderr)
            return 2
    import torch

    everything = {}
    for name in names:
        mod = modules[name]
        t0 = time.perf_counter()
        rows = mod.run(quick=ns.quick)
        print_table(f"{name}  ({time.perf_counter() - t0:.1f} s, torch threads {torch.get_num_threads()}, "
                    f"{'cuda' if torch.cuda.is_available() else 'cpu'})", rows)
        everything[name] = rows
        if ns.save:
            save(name, rows, quick=ns.quick, seconds=time.perf_counter() - t0, note=ns.note, tag=ns.tag)
    if ns.json:
        ns.json.write_text(json.dumps(everything, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
