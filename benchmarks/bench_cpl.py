"""cpl vs dlg on DLG's own setting: sigmoid LeNet, weights U(-0.5, 0.5), 32 px LFW faces.

Figures (Wei et al., ESORICS 2020):
1. convergence: iterations until the gradient loss reaches 1e-5; cpl in at most half of
   DLG's. Both count one L-BFGS step with one gradient evaluation as an iteration (DLG's
   registry setting), with the same budget and seeds; cpl runs with `cpl.max_iter=1`.
2. attack success rate (SSIM >= 0.5) over 20 faces, from the same runs.
3. batches of 1, 2, 4, 8 faces (the authors' recipe: 300 L-BFGS steps of up to 20
   iterations): mean PSNR and success rate per batch size, beside DLG at its defaults.
4. one face at 64 and 128 px.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.bench_analytic import observe, run_attack
from fedattack.metrics import score

LENET = ["model.name=lenet", "model.activation=sigmoid", "model.init=uniform", "model.init_scale=0.5"]
TOL = 1e-5
FACES = list(range(80))  # the training split's faces (label 1) come first in lfw-subset


def dlg_iterations_to(obs, budget: int, seed: int, full_loss: float) -> int | None:
    """Smallest k with DLG's loss <= TOL after k iterations (deterministic runs; bisection)."""
    if not full_loss <= TOL:
        return None
    lo, hi = 0, budget
    while hi - lo > 1:
        mid = (lo + hi) // 2
        rec, _ = run_attack("dlg", obs, [f"dlg.iterations={mid}"], seed=seed)
        lo, hi = (lo, mid) if rec.info["loss"] <= TOL else (mid, hi)
    return hi


def convergence(quick: bool) -> list[dict]:
    budget = 1000 if quick else 1500
    faces = FACES[:3] if quick else FACES[:20]
    per = {"cpl": [], "dlg": []}
    for seed, face in enumerate(faces):
        obs, truth, _ = observe([*LENET, "client.batch_size=1", "client.local_steps=1"], [face])
        rec, sec = run_attack("cpl", obs, ["cpl.max_iter=1", f"cpl.iterations={budget}", f"cpl.tol={TOL:.1e}"],
                              seed=seed)
        s = score(rec, truth, obs.data)
        reached = rec.info["loss"] <= TOL
        per["cpl"].append((rec.info["iterations"] if reached else None, s.psnr, s.ssim, sec))
        rec, sec = run_attack("dlg", obs, [f"dlg.iterations={budget}"], seed=seed)
        s = score(rec, truth, obs.data)
        per["dlg"].append((dlg_iterations_to(obs, budget, seed, rec.info["loss"]), s.psnr, s.ssim, sec))
    rows = []
    for name, runs in per.items():
        its = [r[0] for r in runs if r[0] is not None]
        rows.append({"figure": "LeNet/sigmoid, 32 px faces", "attack": name, "faces": len(runs),
                     "budget": budget, "reached 1e-5": f"{len(its)}/{len(runs)}",
                     "median iters to 1e-5": float(np.median(its)) if its else f"> {budget}",
                     "success (ssim>=0.5)": float(np.mean([r[2] >= 0.5 for r in runs])),
                     "mean psnr": float(np.mean([r[1] for r in runs])), "mean ssim": float(np.mean([r[2] for r in runs])),
                     "seconds/face": float(np.mean([r[3] for r in runs]))})
    cpl_its = [r[0] for r in per["cpl"] if r[0] is not None]
    dlg_its = [r[0] for r in per["dlg"] if r[0] is not None]
    if cpl_its:
        dlg_ref = float(np.median(dlg_its)) if dlg_its else float(budget)
        rows.append({"figure": "cpl iters / dlg iters", "attack": "ratio",
                     "median iters to 1e-5": float(np.median(cpl_its)) / dlg_ref,
                     "reached 1e-5": "dlg never: ratio vs its budget (an upper bound)" if not dlg_its else "",
                     "success (ssim>=0.5)": rows[0]["success (ssim>=0.5)"] - rows[1]["success (ssim>=0.5)"]})
    return rows


def batches(quick: bool) -> list[dict]:
    rows = []
    sizes = [1, 2, 4] if quick else [1, 2, 4, 8]
    per_size = 4 if quick else 8  # images per batch size
    cpl_over = ["cpl.iterations=30"] if quick else []
    for b in sizes:
        for name, over in (("cpl", cpl_over), ("dlg", [])):
            psnr, ssim, secs = [], [], []
            for j in range(per_size // b):
                idx = FACES[20 + j * b: 20 + (j + 1) * b]
                obs, truth, _ = observe([*LENET, f"client.batch_size={b}", "client.local_steps=1"], idx)
                rec, sec = run_attack(name, obs, over, seed=j)
                s = score(rec, truth, obs.data)
                psnr += list(s.per_image.psnr)
                ssim += list(s.per_image.ssim)
                secs.append(sec)
            rows.append({"figure": "batch", "attack": name, "batch": b, "images": len(psnr),
                         "mean psnr": float(np.mean(psnr)), "success (ssim>=0.5)": float(np.mean(np.array(ssim) >= 0.5)),
                         "mean ssim": float(np.mean(ssim)), "seconds/batch": float(np.mean(secs))})
    return rows


def sizes(quick: bool) -> list[dict]:
    rows = []
    for px in ([64] if quick else [64, 128]):
        obs, truth, _ = observe([*LENET, f"data.image_size={px}", "client.batch_size=1", "client.local_steps=1"],
                                [FACES[0]])
        rec, sec = run_attack("cpl", obs, ["cpl.iterations=30"] if quick else [])
        s = score(rec, truth, obs.data)
        rows.append({"figure": f"{px} px", "attack": "cpl", "batch": 1, "mean psnr": s.psnr, "mean ssim": s.ssim,
                     "success (ssim>=0.5)": float(s.ssim >= 0.5), "seconds/batch": sec})
    return rows


def run(quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    return convergence(quick) + batches(quick) + sizes(quick)
