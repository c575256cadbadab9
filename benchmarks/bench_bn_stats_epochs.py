"""bn_stats_epochs: the returned BatchNorm running statistics over local epochs, on Geiping et al.'s ConvNet.

Sixteen photos in two local epochs of batch 4 (three victims): `fedavg` matching the running
statistics the client returned (`bn_stats` 1, the default) beside the update alone (`bn_stats=0`),
at 250 iterations on a CPU as the `dimitrov` benchmark runs this case (`FEDATTACK_FULL=1`, or a
GPU: the attack's own 4000); the `bn_stats` benchmark has the single-step cases and says what is
matched. Columns as in `realistic` (benchmarks/bench_realistic.py).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["bn_stats_epochs"], quick)
