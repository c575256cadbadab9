"""realistic_long: `invgrad` at 4000 iterations (twice its default, which is sized for a CPU audit;
Geiping et al.'s inversefed defaults to 4800, LeakPro to 8000, breaching to 24,000) on the
`realistic` cases where the default stays near or below the flat-image baseline: 8 faces in 4
local steps of 2 on LeNet sigmoid, and Flower's quickstart CNN with 1 image in 1 step and 4
images in 2 steps of 2. It answers whether a "no leak" at the defaults is the update's limit or
the attack's budget. Cases, victims and columns are those of `realistic`
(benchmarks/bench_realistic.py).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["realistic_long"], quick)
