"""features: invgrad's leaked-features prior (`invgrad.features`) at several weights against none
(the default), where the prior applies: one image in one local step, on Flower's quickstart CNN
and on the ConvNet (BatchNorm).

A one-sample gradient gives away the input of every fully connected layer with a bias exactly
(h = dW_i / db_i; Phong et al. 2017, Geiping et al. 2020), so the prior asks the dummy image's
own inputs to those layers to match them (fedattack.attacks.engine.LeakedFeatures). Cases,
victims and columns are those of `realistic` (benchmarks/bench_realistic.py).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["features"], quick)
