"""tv_share: invgrad's total-variation weight across models, on the cases of `breaching`.

invgrad weights its TV prior relative to the gradient mismatch (`invgrad.balanced=true`):
`invgrad.tv` is the share of the mismatch's input-gradient norm that the prior carries at the
start. Rows: LeNet sigmoid on lfw-subset faces, ConvNet (width 8, BatchNorm, ReLU) and Flower's
quickstart CNN on natural photos, 32 px, for one image in one step, 4 images in one step and 4
images in 2 local steps of 2 (the cases of bench_breaching, seed 0, lr 0.01), each attacked by
invgrad at its defaults but for `tv`, 400 iterations, one torch thread. `best` marks the share
that scored highest on the case. The default (0.1) is a compromise: no one share is best on
every model, which is what `audit.calibrate` is for.
"""

from __future__ import annotations

import torch

from benchmarks.bench_breaching import CASES, model_case, run_fedattack, scored

SHARES = (0.05, 0.1, 0.2, 0.3)
ITERATIONS = 400


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    if quick:
        cases, shares, iterations, size = [("lenet", "1 img, 1 step"), ("convnet", "1 img, 1 step")], (0.1, 0.3), 20, 16
    else:
        cases, shares, iterations, size = CASES, SHARES, ITERATIONS, 32
    rows = []
    for model, protocol in cases:
        obs, truth, _ = model_case(model, protocol, size)
        found = []
        for tv in shares:
            r = scored(run_fedattack("invgrad", obs, 0, iterations=iterations, tv=tv), truth, obs)
            found.append({"model": model, "protocol": protocol, "tv": tv, "psnr": r["psnr"], "ssim": r["ssim"],
                          "label_acc": r["label_acc"], "seconds": r["seconds"]})
        top = max(r["psnr"] for r in found)
        rows += [{**r, "best": r["psnr"] == top} for r in found]
    return rows
