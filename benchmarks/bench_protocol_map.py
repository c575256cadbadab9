"""protocol_map: how leakage depends on the client's protocol (images, batch size, local epochs).

The question Flower users ask: "attacks work poorly on my app with 3 epochs of batch 32: is my
deployment safe?". For each model (LeNet sigmoid, ConvNet, Flower's quickstart CNN) and each
client protocol on a grid of images per client x batch size x local epochs (photos, lr 0.01,
the client reshuffling every epoch), the update is attacked by `invgrad`, `fedavg` and
`invgrad` calibrated on the server's own test split; rows give mean PSNR, the margin over the
flat-image baseline of the same victims, and images recovered.

On a CPU the grid is small (the ConvNet at width 8, fewer iterations: `ITERATIONS`); on a GPU,
or with FEDATTACK_FULL=1, the ConvNet runs at width 32 and the attacks at their defaults.
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import torch

from benchmarks.bench_realistic import Case, full_scale, scores, victim
from fedattack.attacks import ATTACKS, AttackContext
from fedattack.attacks.calibrate import calibrate, simulate_cases

ITERATIONS_CPU = 300
MODELS = {
    "LeNet sigmoid": ("model.name=lenet", "model.activation=sigmoid"),
    "ConvNet": ("model.name=convnet", "model.activation=relu"),
    "quickstart CNN": ("model.name=quickstart-cnn", "model.activation=relu"),
}


def grid(quick: bool) -> list[tuple[int, int, int]]:
    """(images per client, batch size, local epochs)."""
    if quick:
        return [(4, 2, 1)]
    return list(itertools.product((4, 16), (2, 8), (1, 2)))


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    full = full_scale()
    iterations = None if full else (50 if quick else ITERATIONS_CPU)
    rows = []
    models = dict(list(MODELS.items())[:1]) if quick else MODELS
    for (model, overrides), (n, b, e) in itertools.product(models.items(), grid(quick)):
        width = ("model.width=32" if full else "model.width=8",) if model == "ConvNet" else ()
        case = Case(f"{model}: {n} img, batch {b}, {e} epoch{'s' if e > 1 else ''}",
                    ("data.name=photos", *overrides, *width, "client.local_steps=0", f"client.local_epochs={e}",
                     f"client.batch_size={b}"), n, seeds=(0,))
        obs, truth, exp = victim(case, 0)
        for attack, calibrated in (("invgrad", False), ("fedavg", False), ("invgrad", True)):
            params = ATTACKS.get(attack).params()
            if iterations:
                params = replace(params, iterations=min(params.iterations, iterations))
            ctx = AttackContext(seed=0)
            if calibrated:
                x, y = exp.test.get(range(len(exp.test)))
                params = calibrate(attack, params, simulate_cases(obs, x, y, count=1, seed=0), budget=6,
                                   ctx=ctx).params
            rec = ATTACKS.get(attack)(obs, params, ctx)
            s = scores(rec, truth, obs)
            rows.append({"model": model, "images": n, "batch": b, "epochs": e,
                         "attack": attack + (" (calibrated)" if calibrated else ""), "psnr": s["psnr"],
                         "margin": s["psnr"] - s["flat"], "ssim": s["ssim"],
                         "recovered": f"{s['recovered']}/{s['images']}", "iterations": params.iterations})
    return rows

