"""convnet_epochs: the FedAvg attack (Dimitrov et al., TMLR 2022) at its defaults and calibrated
(`audit.calibrate`) on the ConvNet, 16 images in 2 local epochs of batch 4, photos.

The same case as the `dimitrov` benchmark's first row, at its CPU scale (ConvNet width 8, 250
iterations; `FEDATTACK_FULL=1`, or a GPU, runs width 32 and the attack's own iteration count).
Calibration tunes at the audit's default budget and may lengthen the run (its iteration
doubling), so the calibrated row's `tuned` column says the iterations it ran. Cases, victims and
columns are those of `realistic` (benchmarks/bench_realistic.py).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["convnet_epochs"], quick)
