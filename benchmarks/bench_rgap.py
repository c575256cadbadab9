"""rgap: R-GAP's closed-form recursion, one image, one local step.

Rows: DLG's setting (LeNet sigmoid, U(-0.5, 0.5), 32 px RGB faces, seed 0) on faces 0-9;
LeNet at PyTorch's default init with each activation; the MLP; and DLG's setting under
Gaussian noise (sigma in gradient units), where a closed-form solve has no prior to fall
back on. Seconds are the whole attack on one torch thread.
"""

from __future__ import annotations

import torch

from benchmarks.bench_analytic import observe, run_attack
from fedattack.metrics import score

ONE = ["client.batch_size=1", "client.local_steps=1", "data.channels=3"]
DLG_SETTING = ["model.name=lenet", "model.activation=sigmoid", "model.init=uniform", *ONE]


def _row(case: str, overrides: list[str], face: int, attack_overrides: list[str] = ()) -> dict:
    obs, truth, _ = observe(overrides, [face])
    rec, sec = run_attack("rgap", obs, list(attack_overrides))
    s = score(rec, truth, obs.data)
    return {"case": case, "face": face, "psnr_db": s.psnr, "ssim": s.ssim, "labels": s.label_acc,
            "seconds": sec, "cgls_iterations": "/".join(map(str, rec.info["iterations"])), ">= 30 dB": s.psnr >= 30}


def run(quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    faces = [0, 1] if quick else list(range(10))
    rows = [_row("DLG setting", DLG_SETTING, f) for f in faces]
    for act in (["sigmoid", "tanh"] if quick else ["sigmoid", "tanh", "leakyrelu", "relu"]):
        rows += [_row(f"lenet/{act}, default init", ["model.name=lenet", f"model.activation={act}", *ONE], f)
                 for f in faces[:2 if quick else 4]]
    for act in ("sigmoid", "relu"):
        rows.append(_row(f"mlp/{act}", ["model.name=mlp", f"model.activation={act}", *ONE], 0))
    for sigma in ([1e-3] if quick else [1e-4, 1e-3, 1e-2]):
        rows += [_row(f"DLG setting, gaussian sigma={sigma:g}", [*DLG_SETTING, "client.defenses=[gaussian]",
                                                                 f"gaussian.sigma={sigma}"], f)
                 for f in faces[:2 if quick else 4]]
    return rows
