"""init_colour: where the optimization attacks start, on Flower's quickstart CNN (ReLU, max-pooling).

Geiping et al. start `invgrad` from N(0, 1) in model-input units, around the dataset's mean colour
(`init=randn`); Dimitrov et al.'s FedAvg attack starts near the dataset mean (`init=mean`, noise of
std 0.1). On a ReLU CNN a run tends to keep the colour it starts with: the first convolution,
where colour lives, holds a small share of the update's norm. `init=leaked-mean` (`invgrad`'s
default) starts from the same N(0, 1) noise around the client's mean colour as the first layer's
gradient gives it away (`fedattack.attacks.engine.leaked_colour`). Each attack runs at its other
defaults from each of the three starts, on the `realistic` cases of the quickstart CNN (one image
in one step, four images in two steps of two) and the same victims; columns as in `realistic`
(benchmarks/bench_realistic.py).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["init_colour"], quick)
