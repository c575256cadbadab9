"""distance: invgrad's gradient distance, the global cosine (the default, Geiping et al.)
against the squared L2 distance (DLG's), on one image in one step (Flower's quickstart CNN and
the ConvNet with BatchNorm), four images in two steps (quickstart CNN, photos and faces) and
eight images in four steps (sigmoid LeNet, faces).

The server knows the client's learning rate and number of steps, so the update's scale is
information an attacker may match (L2) or ignore (cosine: Geiping et al. argue the scale
reflects the training state more than the image). Everything else is invgrad's default; its
signed steps and the priors' weights, set as shares of the mismatch's input gradient, do not
depend on the distance's scale. Cases, victims and columns are those of `realistic`
(benchmarks/bench_realistic.py).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["distance"], quick)
