"""restarts: one long `invgrad` run against two short restarts, at the same number of gradient
evaluations (2 x 1000 against 1 x 2000 iterations), on the `realistic` cases and victims.

Restarts guard against a bad start; iterations let one start converge. On 2 CPU cores one start
of 2000 took 1.0 to 1.5 times as long as two of 1000 (the restarts run as one vmapped batch, and
small models pay less for the second); on a GPU restarts run side by side. This benchmark is what
`invgrad`'s defaults (one restart of 2000 iterations) rest on. A third row gives four restarts of
2000 iterations (more work, not equal work: what calibration's restart doubling,
`audit.calibration_restart_factor`, buys where it is chosen). Cases, victims and columns are
those of `realistic` (benchmarks/bench_realistic.py).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["restarts"], quick)
