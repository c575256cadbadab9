"""leaked_colour: how well the first layer's gradient gives the client's mean colour away.

For each unit k of the layer that takes the images (with a bias), dW_k / db_k averages the
input patches weighted by the unit's error signal: the client's mean colour where that signal
has one sign, something else where it cancels (`fedattack.attacks.engine.leaked_colour`, the
centre of `invgrad`'s and `fedavg`'s default start, init=leaked-mean). Two ways to pool the
units' guesses: the plain median (what the attacks start from), and the median with each guess
weighted by |db_k| (the units that cancel least). Per case, over its victims: the mean and the
largest error of the worst channel, in units of the pixel range (0..1), of each pooling, and of
the dataset's mean colour (what `init=randn` starts around: over many images a client's mean
colour nears it). No attack runs; the victims are `bench_realistic.victim`'s (client training by
fedattack's own client code, images drawn by seed).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.bench_realistic import Case, victim
from fedattack.attacks.engine import leaked_colour, target

ONE = ("client.local_steps=1", "client.batch_size=1")
QS = ("model.name=quickstart-cnn", "model.activation=relu")
EPOCH_OF_8 = ("client.local_steps=0", "client.local_epochs=1", "client.batch_size=8")
TWO_EPOCHS_OF_4 = ("client.local_steps=0", "client.local_epochs=2", "client.batch_size=4")


def colour_cases() -> list[Case]:
    seeds = tuple(range(8))
    return [
        Case("1 img, 1 step, quickstart CNN, photos", ("data.name=photos", *QS, *ONE), 1, seeds),
        Case("1 img, 1 step, quickstart CNN, lfw-subset", ("data.name=lfw-subset", *QS, *ONE), 1, seeds),
        Case("1 img, 1 step, quickstart CNN, digits", ("data.name=digits", *QS, *ONE), 1, seeds),
        Case("1 img, 2 steps, quickstart CNN, photos",
             ("data.name=photos", *QS, "client.local_steps=2", "client.batch_size=1"), 1, seeds),
        Case("1 img, 1 step, LeNet sigmoid, photos", ("data.name=photos", "model.name=lenet", *ONE), 1, seeds),
        Case("1 img, 1 step, LeNet ReLU, photos",
             ("data.name=photos", "model.name=lenet", "model.activation=relu", *ONE), 1, seeds),
        Case("4 img, 1 step, quickstart CNN, photos",
             ("data.name=photos", *QS, "client.local_steps=1", "client.batch_size=4"), 4, seeds),
        Case("4 img, 1 step, LeNet sigmoid, photos",
             ("data.name=photos", "model.name=lenet", "client.local_steps=1", "client.batch_size=4"), 4, seeds),
        Case("4 img, 2 steps of 2, quickstart CNN, photos",
             ("data.name=photos", *QS, "client.local_steps=2", "client.batch_size=2"), 4, seeds),
        Case("8 img, 4 steps of 2, LeNet sigmoid, photos",
             ("data.name=photos", "model.name=lenet", "client.local_steps=4", "client.batch_size=2"), 8, seeds),
        Case("8 img, 4 steps of 2, LeNet sigmoid, lfw-subset",
             ("data.name=lfw-subset", "model.name=lenet", "client.local_steps=4", "client.batch_size=2"), 8, seeds),
        Case("16 img, 1 epoch of 8, LeNet sigmoid, photos",
             ("data.name=photos", "model.name=lenet", *EPOCH_OF_8), 16, seeds),
        Case("16 img, 1 epoch of 8, quickstart CNN, photos", ("data.name=photos", *QS, *EPOCH_OF_8), 16, seeds),
        Case("16 img, 2 epochs of 4, LeNet sigmoid, photos",
             ("data.name=photos", "model.name=lenet", *TWO_EPOCHS_OF_4), 16, seeds),
        Case("16 img, 2 epochs of 4, quickstart CNN, photos", ("data.name=photos", *QS, *TWO_EPOCHS_OF_4), 16, seeds),
    ]


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    for case in colour_cases()[: 2 if quick else None]:
        errors: dict[str, list[float]] = {"median": [], "weighted": [], "dataset mean": []}
        missing = 0
        for seed in case.seeds[: 2 if quick else None]:
            obs, truth, _ = victim(case, seed)
            lo, hi = (b.flatten() for b in obs.data.bounds())
            true = truth.images.float().mean((0, 2, 3))
            update = target(obs)
            guesses = {pooling: leaked_colour(update, obs.data, weighted=pooling == "weighted")
                       for pooling in ("median", "weighted")}
            guesses["dataset mean"] = torch.zeros_like(true)  # model inputs are centred on it
            if any(g is None for g in guesses.values()):
                missing += 1
                continue
            for pooling, guess in guesses.items():
                errors[pooling].append(float(((guess - true) / (hi - lo)).abs().max()))
        rows.append({"case": case.name, "images": case.images, "victims": len(errors["median"]),
                     "no colour": missing,
                     **{f"{p} mean": float(np.mean(v)) for p, v in errors.items()},
                     **{f"{p} max": float(np.max(v)) for p, v in errors.items()}})
    return rows
