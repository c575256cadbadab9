"""realistic_epochs: 16 images, 2 local epochs of batch 4 (photos), on Flower's quickstart CNN and
LeNet sigmoid: `invgrad` and `fedavg` at their defaults, `invgrad` calibrated; two seeds.
The cases and columns are those of `realistic` (benchmarks/bench_realistic.py).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["realistic_epochs"], quick)
