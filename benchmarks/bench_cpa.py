"""cpa (Cocktail Party Attack): unmixing an aggregated first-layer gradient with ICA.

Figure: the aggregate of 4 clients x 4 images (16 images, one local step each) through an
MLP -> at least 8 of the 16 recovered with SSIM >= 0.5. Rows per batch draw, per method
(the paper's Adam objective vs FastICA's fixed point), unmixing domain (pixel differences vs
raw pixels, the paper's) and sign/scale rule.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.bench_analytic import observe, run_attack
from fedattack.metrics import score


def run(quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    draws = [0] if quick else [0, 1, 2, 3]
    variants = [["cpa.method=fastica"], ["cpa.method=fastica", "cpa.scale=bias"],
                ["cpa.method=fastica", "cpa.scale=prior"]]
    slow = [[], ["cpa.domain=pixels"]]  # the default (Adam, 25000 steps) and the paper's raw-pixel domain
    for act in (["relu"] if quick else ["relu", "sigmoid"]):
        for draw in draws:
            idx = np.random.default_rng(draw).choice(160, 16, replace=False)
            obs, truth, _ = observe(["model.name=mlp", f"model.activation={act}", "client.batch_size=4",
                                     "client.local_steps=1"], idx, clients=4)
            todo = variants + (slow if not quick and (act == "relu" or draw == 0) else [])
            if quick:
                todo = variants[:1] + [["cpa.iterations=2000"]]
            for over in todo:
                rec, sec = run_attack("cpa", obs, over)
                s = score(rec, truth, obs.data)
                # images cpa returned (an unmatched one is scored as a grey guess, never as unmixed)
                good = int(((s.per_image.ssim >= 0.5) & (s.per_image.match >= 0)).sum())
                rows.append({"mlp": act, "draw": draw, "clients": 4, "images": 16,
                             "method": rec.info["method"], "domain": rec.info["domain"],
                             "scale": next((o.split("=")[1] for o in over if "scale" in o), "consistency"),
                             "iterations": rec.info["iterations"], "ssim>=0.5": good, "mean ssim": s.ssim,
                             "mean psnr": s.psnr, "seconds": sec, ">= 8 of 16": good >= 8})
    return rows
