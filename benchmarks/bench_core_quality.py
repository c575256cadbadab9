"""Reconstruction quality of DLG, iDLG and Inverting Gradients on lfw-subset (LeNet,
sigmoid, default init), per client protocol, at the attacks' default parameters; and
ablations of Inverting Gradients' choices on the default protocol (2 local steps of
batch 2): label-candidate screening, the total-variation weight, restarts.

Means over seeds of PSNR / SSIM (optimally matched), label accuracy, and seconds per job.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from fedattack.attacks import ATTACKS, AttackContext
from fedattack.metrics.labels import label_accuracy
from fedattack.testing.cases import observed_update, psnr_ssim

PROTOCOLS = {
    "1 image, 1 step": ("client.batch_size=1", "client.local_steps=1"),
    "4 images, 2 steps of 2 (default)": (),
    "4 images, 1 step": ("client.batch_size=4", "client.local_steps=1"),
}


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _measure(attack: str, params, protocol: str, seeds, variant: str) -> dict:
    device = _device()
    psnr, ssim, lab, secs = [], [], [], []
    for s in seeds:
        obs, truth = observed_update(f"seed={s}", *PROTOCOLS[protocol])
        t0 = time.perf_counter()
        rec = ATTACKS.get(attack)(obs.to(device), params, AttackContext(device=device, seed=s))
        secs.append(time.perf_counter() - t0)
        p, q = psnr_ssim(rec.images.cpu(), truth, obs)
        psnr.append(p)
        ssim.append(q)
        lab.append(label_accuracy(rec.labels.cpu().numpy(), truth.labels.numpy()))
    return {"protocol": protocol, "attack": attack, "variant": variant, "seeds": len(list(seeds)),
            "psnr": float(np.mean(psnr)), "psnr_min": float(np.min(psnr)), "ssim": float(np.mean(ssim)),
            "label_acc": float(np.mean(lab)), "seconds": float(np.mean(secs))}


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    seeds = range(1 if quick else 3)
    rows = []
    for protocol in PROTOCOLS:
        for attack in ("dlg", "idlg", "invgrad"):
            params = ATTACKS.get(attack).params()
            if quick:
                params = replace(params, iterations=min(params.iterations, 100 if attack != "invgrad" else 200))
            rows.append(_measure(attack, params, protocol, seeds, "defaults" + (" (quick)" if quick else "")))
    if quick:
        return rows
    default = "4 images, 2 steps of 2 (default)"
    base = ATTACKS.get("invgrad").params()
    for variant, params in [("no label screening (candidates=1)", replace(base, candidates=1)),
                            ("tv=0", replace(base, tv=0.0)),
                            ("tv=1e-4", replace(base, tv=1e-4)),
                            ("restarts=4", replace(base, restarts=4)),
                            ("iterations=3000", replace(base, iterations=3000))]:
        rows.append(_measure("invgrad", params, default, seeds, variant))
    return rows
