"""rebalance: invgrad's TV weight measured anew where each phase of a screened run starts (the
default) against once, where the first starts (`rebalance=false`), on several images over
several local steps.

invgrad's prior weight is relative: `tv` is the share of the mismatch's input gradient that the
prior's gradient has where a run starts. A screened run has three phases (the label screen, a
longer look at the closest candidates, the run itself), each started by `optimize.run_adam`,
and by default each is balanced where it starts, against a mismatch that has shrunk by then:
the prior weighs less in each later phase. Which suits a deployment depends on the model, so
`audit.calibrate` tries the flipped setting on its own simulated updates and keeps it only
where it wins there and on fresh ones. Cases, victims and columns are those of `realistic`
(benchmarks/bench_realistic.py), with two more cases of 4 images in 2 steps: Flower's
quickstart CNN on faces, and the ConvNet (BatchNorm) on photos.
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["rebalance"], quick)
