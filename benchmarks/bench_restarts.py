"""restarts: one long `invgrad` run against two short restarts, at the same number of gradient
evaluations (2 x 1000 against 1 x 2000 iterations), on the `realistic` cases and victims.

Restarts guard against a bad start; iterations let one start converge. On a CPU the two cost
about the same (the restarts run as one vmapped batch, so small models pay a little less per
restart, large ones the same); on a GPU restarts are nearly free. This benchmark is what
`invgrad`'s defaults (one restart of 2000 iterations) rest on. Cases, victims and columns are
those of `realistic` (benchmarks/bench_realistic.py).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["restarts"], quick)
