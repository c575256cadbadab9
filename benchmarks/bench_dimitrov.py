"""dimitrov: the FedAvg attack against multi-step `invgrad` where clients train whole epochs:
16 images in 2 epochs of batch 4 on ConvNet, and Dimitrov et al.'s protocol at small scale
(a client of 50 images, batch 10, 1 and 5 local epochs, ConvNet). On a CPU: ConvNet at width 8,
the 50-image cases at 16 px, one seed, and every attack at 250 iterations (equal work for both). Cases and columns as in `realistic` (benchmarks/bench_realistic.py).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["dimitrov"], quick)
