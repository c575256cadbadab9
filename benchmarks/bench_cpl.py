"""cpl vs dlg on DLG's own setting: sigmoid LeNet, weights U(-0.5, 0.5), 32 px LFW faces.

Figures (Wei et al., ESORICS 2020):
1. convergence: iterations until the gradient loss reaches 1e-5; cpl in at most half of
   DLG's. Both count one L-BFGS step with one gradient evaluation as an iteration (DLG's
   registry setting), with the same budget and seeds; cpl runs with `cpl.max_iter=1`.
   Beside them, cpl with its other seeds (one colour; Gaussian noise, i.e. DLG's start with
   CPL's fixed labels).
2. attack success rate (SSIM >= 0.5) over 20 faces, from the same runs.
3. batches of 1, 2, 4, 8 faces (the authors' recipe: 300 L-BFGS steps of up to 20
   iterations): mean PSNR and success rate per batch size, beside DLG at its defaults.
4. one face at 64 and 128 px (AdamW as the authors ran it there, and L-BFGS).
Columns: success = share of images with SSIM >= 0.5; psnr, ssim: means over images.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.bench_analytic import observe, run_attack
from fedattack.metrics import score

LENET = ["model.name=lenet", "model.activation=sigmoid", "model.init=uniform", "model.init_scale=0.5"]
TOL = 1e-5
FACES = list(range(80))  # the training split's faces (label 1) come first in lfw-subset


def dlg_iterations_to(obs, budget: int, seed: int, full_loss: float, resolution: int = 20) -> int | None:
    """About the smallest k with DLG's loss <= TOL after k iterations (its runs are
    deterministic; bisection to `resolution` iterations, reporting the upper end)."""
    if not full_loss <= TOL:
        return None
    lo, hi = 0, budget
    while hi - lo > resolution:
        mid = (lo + hi) // 2
        rec, _ = run_attack("dlg", obs, [f"dlg.iterations={mid}"], seed=seed)
        lo, hi = (lo, mid) if rec.info["loss"] <= TOL else (mid, hi)
    return hi


def convergence(quick: bool) -> list[dict]:
    budget = 1000 if quick else 1500
    faces = FACES[:3] if quick else FACES[:20]
    variants = {"cpl": ["cpl.init=patch"], "dlg": None}
    if not quick:  # the seed ablation: one colour, and DLG's Gaussian noise with CPL's fixed labels
        variants.update({"cpl color": ["cpl.init=color"], "cpl randn": ["cpl.init=randn"]})
    per: dict[str, list] = {name: [] for name in variants}
    for seed, face in enumerate(faces):
        obs, truth, _ = observe([*LENET, "client.batch_size=1", "client.local_steps=1"], [face])
        for name, init in variants.items():
            if init is None:
                rec, sec = run_attack("dlg", obs, [f"dlg.iterations={budget}"], seed=seed)
                its = dlg_iterations_to(obs, budget, seed, rec.info["loss"])
            else:
                rec, sec = run_attack("cpl", obs, [*init, "cpl.max_iter=1", f"cpl.iterations={budget}",
                                                   f"cpl.tol={TOL:.1e}"], seed=seed)
                its = rec.info["iterations"] if rec.info["loss"] <= TOL else None
            s = score(rec, truth, obs.data)
            per[name].append((its, s.psnr, s.ssim, sec))
    rows = []
    for name, runs in per.items():
        its = [r[0] for r in runs if r[0] is not None]
        rows.append({"case": f"32px x1, budget {budget}", "attack": name, "images": len(runs),
                     "to 1e-5": f"{len(its)}/{len(runs)}",
                     "median iters": float(np.median(its)) if its else f"> {budget}",
                     "success": float(np.mean([r[2] >= 0.5 for r in runs])),
                     "psnr": float(np.mean([r[1] for r in runs])), "ssim": float(np.mean([r[2] for r in runs])),
                     "s/run": float(np.mean([r[3] for r in runs]))})
    cpl_its = [r[0] for r in per["cpl"] if r[0] is not None]
    dlg_its = [r[0] for r in per["dlg"] if r[0] is not None]
    if cpl_its:
        dlg_ref = float(np.median(dlg_its)) if dlg_its else float(budget)
        rows.append({"case": "cpl / dlg" + (" (dlg never: vs its budget)" if not dlg_its else ""),
                     "attack": "ratio", "median iters": float(np.median(cpl_its)) / dlg_ref,
                     "success": rows[0]["success"] - rows[1]["success"]})
    return rows


def batches(quick: bool) -> list[dict]:
    rows = []
    sizes = [1, 2, 4] if quick else [1, 2, 4, 8]
    per_size = 4 if quick else 8  # images per batch size
    cpl_over = ["cpl.iterations=30"] if quick else []
    for b in sizes:
        for name, over in (("cpl", cpl_over), ("dlg", [])):
            psnr, ssim, secs, labels = [], [], [], []
            for j in range(per_size // b):
                idx = FACES[20 + j * b: 20 + (j + 1) * b]
                obs, truth, _ = observe([*LENET, f"client.batch_size={b}", "client.local_steps=1"], idx)
                rec, sec = run_attack(name, obs, over, seed=j)
                s = score(rec, truth, obs.data)
                psnr += list(s.per_image.psnr)
                ssim += list(s.per_image.ssim)
                secs.append(sec)
                labels.append(s.label_acc)
            rows.append({"case": f"32px x{b}", "attack": name, "images": len(psnr),
                         "success": float(np.mean(np.array(ssim) >= 0.5)), "psnr": float(np.mean(psnr)),
                         "ssim": float(np.mean(ssim)), "labels": float(np.mean(labels)),
                         "s/run": float(np.mean(secs))})
    return rows


def sizes(quick: bool) -> list[dict]:
    """One face at 64 and 128 px on LeNet with U(-0.1, 0.1) weights (the authors' larger-image setting)."""
    rows = []
    for px in ([64] if quick else [64, 128]):
        obs, truth, _ = observe([*LENET, "model.init_scale=0.1", f"data.image_size={px}", "client.batch_size=1",
                                 "client.local_steps=1"], [FACES[20]])
        for opt in ("adamw", "lbfgs"):
            over = [f"cpl.optimizer={opt}"] + (["cpl.adamw_iterations=200", "cpl.iterations=60"] if quick else [])
            rec, sec = run_attack("cpl", obs, over)
            s = score(rec, truth, obs.data)
            rows.append({"case": f"{px}px x1 ({opt})", "attack": "cpl", "images": 1, "success": float(s.ssim >= 0.5),
                         "psnr": s.psnr, "ssim": s.ssim, "s/run": sec})
    return rows


def run(quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    return convergence(quick) + batches(quick) + sizes(quick)
