"""calibration_budget: `invgrad` calibrated at the audit's default budget
(`audit.calibration_budget`, 12 settings), where `realistic` calibrates it on 6 to bound its CPU
hours, on Flower's quickstart CNN, 4 images in 2 local steps of 2, on natural photos and on
faces. Cases, victims and columns are those of `realistic` (benchmarks/bench_realistic.py); the
defaults rows are measured again beside them.
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["calibration_budget"], quick)
