"""soft_pool: invgrad and the FedAvg attack with their max-pools annealed from soft to hard
(`invgrad.soft_pool`, `fedavg.soft_pool`, default 0.3 in both) against the hard max-pools throughout
(`soft_pool=0`), on the max-pooling models of
`realistic`: Flower's quickstart CNN (one photo in one step; four images in two steps of two,
photos and faces) and the ConvNet with BatchNorm (one photo; four in two steps).

A max-pool's gradient reaches only each window's winning position, so a search that starts with
the wrong winners settles in a local minimum; a softmax over each window passes every position's
share, and lowering its temperature to 0 by the middle of the run ends on the client's own model
(fedattack/attacks/pooling.py). Cases, victims and columns are those of `realistic`
(benchmarks/bench_realistic.py); models without max-pools are unaffected (the setting does
nothing there).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["soft_pool"], quick)
