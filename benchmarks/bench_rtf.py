"""rtf (Robbing the Fed): images read off the imprint block's gradient.

Figure: a batch of 64, one local step -> at least half of the images at PSNR >= 30 dB.
Also the same 64 images spread over 4 clients and seen only as their aggregate (SecAgg),
and the number of bins.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.bench_analytic import observe, run_attack
from fedattack.metrics import score


def run(quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    cases = [("lenet", 64, 1, 128), ("lenet", 64, 4, 128)]
    if not quick:
        cases += [("convnet", 64, 1, 128), ("mlp", 64, 1, 128), ("lenet", 64, 1, 64), ("lenet", 64, 1, 256),
                  ("lenet", 128, 8, 256)]
    for model, batch, clients, bins in cases:
        # a random draw from the training split (faces and non-faces), as a client's batch would be
        idx = np.sort(np.random.default_rng(batch).choice(160, batch, replace=False))
        obs, truth, _ = observe([f"model.name={model}", "server.mode=malicious", "audit.attacks=[rtf]",
                                 f"rtf.num_bins={bins}", f"client.batch_size={batch // clients}",
                                 "client.local_steps=1"], idx, clients=clients)
        rec, sec = run_attack("rtf", obs, [f"rtf.num_bins={bins}"])
        s = score(rec, truth, obs.data)
        good = s.per_image.psnr >= 30
        rows.append({"model": model, "batch": batch, "clients": clients, "bins": bins,
                     ">=30dB": f"{int(good.sum())}/{batch}", "share": float(good.mean()),
                     "their psnr": float(s.per_image.psnr[good].mean()) if good.any() else float("nan"),
                     "seconds": sec, "half at 30 dB": bool(good.mean() >= 0.5)})
    return rows
