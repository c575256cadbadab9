"""Run the benchmark modules and print their tables (`python -m benchmarks --help`)."""

from __future__ import annotations

import argparse
import importlib
import json
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("names", nargs="*", help=f"which (default: all): {', '.join(available())}")
    parser.add_argument("--quick", action="store_true", help="smaller cases, for a smoke run")
    parser.add_argument("--json", type=Path, help="also write all rows to this JSON file")
    ns = parser.parse_args(argv)
    names = ns.names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        print(f"benchmarks: unknown benchmark {unknown[0]}; allowed: {', '.join(available())}", file=sys.stderr)
        return 2
    import torch

    everything = {}
    for name in names:
        mod = importlib.import_module(f"benchmarks.bench_{name}")
        t0 = time.perf_counter()
        rows = mod.run(quick=ns.quick)
        print_table(f"{name}  ({time.perf_counter() - t0:.1f} s, torch threads {torch.get_num_threads()}, "
                    f"{'cuda' if torch.cuda.is_available() else 'cpu'})", rows)
        everything[name] = rows
    if ns.json:
        ns.json.write_text(json.dumps(everything, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
