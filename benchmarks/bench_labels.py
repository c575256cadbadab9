"""Label-recovery accuracy of every registered method (fedattack.attacks.labels).

Many-class cases use random images with chosen labels (10 classes; distinct labels, or
drawn with repeats; one or several local steps); the real-data case is lfw-subset's two
classes (face / non-face) under the default protocol. Accuracy is multiset overlap, the
mean over seeds; `seconds` is the mean time per recovery.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from fedattack.attacks.labels import LABELS
from fedattack.metrics.labels import label_accuracy
from fedattack.testing.cases import observed_update, synthetic_update

SYNTHETIC = [  # (name, batch, local steps, distinct labels, model, activation)
    ("8 distinct, 1 step", 8, 1, True, "lenet", "sigmoid"),
    ("16 with repeats, 1 step", 16, 1, False, "lenet", "sigmoid"),
    ("32 with repeats, 1 step", 32, 1, False, "lenet", "sigmoid"),
    ("16 with repeats, 4 steps", 16, 4, False, "lenet", "sigmoid"),
    ("16 with repeats, 1 step", 16, 1, False, "convnet", "relu"),
    ("16 with repeats, 1 step", 16, 1, False, "mlp", "relu"),
]


def _score(cases, methods) -> dict:
    acc = {m: [] for m in methods}
    secs = {m: [] for m in methods}
    for obs, truth in cases:
        for m in methods:
            t0 = time.perf_counter()
            pred = LABELS.get(m)(obs, len(truth.labels))
            secs[m].append(time.perf_counter() - t0)
            acc[m].append(label_accuracy(pred.cpu().numpy(), truth.labels.numpy()))
    return {m: (float(np.mean(acc[m])), float(np.mean(secs[m]))) for m in methods}


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    methods = LABELS.names()
    seeds = range(2 if quick else 5)
    rows = []
    for name, b, steps, distinct, model, act in (SYNTHETIC[:2] if quick else SYNTHETIC):
        cases = []
        for s in seeds:
            rng = np.random.default_rng(s)
            labels = rng.permutation(10)[:b] if distinct else rng.integers(0, 10, b)
            cases.append(synthetic_update([int(v) for v in labels], model=model, activation=act, steps=steps, seed=s))
        for m, (acc, sec) in _score(cases, methods).items():
            rows.append({"data": "random images, 10 classes", "model": f"{model}/{act}", "batch": name,
                         "method": m, "accuracy": acc, "seconds": sec})
    for proto, ov in [("4 images, 2 steps of 2 (default)", []),
                      ("8 images, 1 step", ["client.batch_size=8", "client.local_steps=1"])]:
        cases = [observed_update(f"seed={s}", *ov) for s in seeds]
        for m, (acc, sec) in _score(cases, methods).items():
            rows.append({"data": "lfw-subset, 2 classes", "model": "lenet/sigmoid", "batch": proto, "method": m,
                         "accuracy": acc, "seconds": sec})
    return rows
