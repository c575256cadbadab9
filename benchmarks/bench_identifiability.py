"""identifiability: how many pixel directions one client update pins down, near the true images.

For the update u(x) a client sends after training on its images x, the Jacobian J = du/dx at the
true images (fedattack's trial update: the client's protocol replayed on the server's copy of the
model, in float64, by forward-mode differentiation) says which small changes of the images change
the update. Its rank r is the number of pixel directions the update constrains, to first order;
the other d - r directions (its null space) leave the update unchanged, so matching the update
cannot tell them apart and only an attack's prior decides them. Per victim (one photo, one local
SGD step, the victims of the `realistic` cases):
- `rank` of J (singular values above 1e-6 of the largest), the pixels d and the share r / d;
  `gap`: the smallest singular value kept over the largest dropped (a clean cut is many orders
  of magnitude);
- two linearized oracles, which know the true image's component in the constrained directions
  exactly: `known + flat` takes the rest from the flat grey image (the image's mean grey, the
  baseline of every table), `known + smoothest` chooses the rest to make the image as smooth as
  possible (least squared differences of neighbouring pixels, a quadratic cousin of TV);
  clipped to valid pixels and scored as the attacks are (PSNR, SSIM);
- `invgrad` at its defaults on the same update (attack seed = victim), scored the same way.

Why the rank can be low: on Flower's quickstart CNN (conv 5x5, ReLU, 2x2 max-pooling, twice, then
fully connected layers) every layer after the first pooling sees the image only through that
pooling's output, 6 x 14 x 14 = 1176 numbers, and the first convolution's own gradient adds
6 x 3 x 5 x 5 + 6 = 456 more, so one image's update constrains at most 1632 of its 3072 pixel
directions, however many entries (61,751) it has; units the ReLU switches off constrain nothing
(so a ReLU LeNet, without pooling, loses directions too, where a sigmoid LeNet keeps them all). On
the ConvNet, BatchNorm right after the first convolution makes the update blind to the image's
contrast about the dataset mean (scaling it leaves the normalized activations unchanged, but for
BatchNorm's eps): on most victims that one direction is all the update loses (where the `gap`
is small, the singular values fall off without a clean cut). The smoothest fill then takes the
contrast away and scores below the flat fill, which there shows what the update holds.

How to read it: `known + flat` is what the update alone gives, near the truth; `known +
smoothest` is what it gives with a quadratic smoothness prior and a perfect search. Neither bounds
a nonlinear attack with another prior, but where `invgrad` scores well below `known + smoothest`,
the update's information is not what stops it: a better search could gain. No attack's default
is derived from this section.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from torch.func import jvp, vmap

from benchmarks.bench_realistic import Case, cases, flat_psnr, victim
from fedattack.attacks import ATTACKS, AttackContext
from fedattack.attacks.engine import trial_update
from fedattack.metrics.images import match_and_score

RANK_TOL = 1e-6  # singular values above this share of the largest count toward the rank
CHUNK = 256  # pixel directions per vectorized forward-mode pass
ORACLES = ("known + flat", "known + smoothest")


def realistic_case(name: str) -> Case:
    return next(c for c in cases(False) if c.name == name)


def lenet_case(activation: str, size: int = 32, seeds: tuple[int, ...] = (0, 1, 2, 3)) -> Case:
    return Case(f"1 img, 1 step, LeNet {activation}, photos",
                ("data.name=photos", "model.name=lenet", f"model.activation={activation}", f"data.image_size={size}",
                 "client.local_steps=1", "client.batch_size=1"), 1, seeds=seeds)


def update_function(obs, labels: torch.Tensor):
    """u(pixels): the trial update (gradient units, flattened) as a float64 function of the images
    in [0, 1] pixel units, flattened."""
    trial = trial_update(obs, torch.device("cpu"))
    fm = trial.model
    fm.module.double()
    fm.params = {k: v.double() for k, v in fm.params.items()}
    fm.buffers = {k: v.double() if v.is_floating_point() else v for k, v in fm.buffers.items()}
    keys = list(fm.params)
    shape = (len(labels), *obs.data.shape)
    mean = torch.tensor(obs.data.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(obs.data.std, dtype=torch.float64).view(1, -1, 1, 1)

    def u(pixels: torch.Tensor) -> torch.Tensor:
        out = trial((pixels.view(shape) - mean) / std, labels)
        return torch.cat([out[k].reshape(-1) for k in keys])

    return u


def jacobian(u, pixels: torch.Tensor) -> torch.Tensor:
    """du/dpixels (entries, d), column by column: one forward-mode pass per pixel direction,
    CHUNK directions at a time."""
    d = pixels.numel()
    columns = []
    for start in range(0, d, CHUNK):
        k = min(CHUNK, d - start)
        basis = torch.zeros(k, d, dtype=torch.float64)
        basis[torch.arange(k), torch.arange(start, start + k)] = 1
        columns.append(vmap(lambda v: jvp(u, (pixels,), (v,))[1])(basis).detach())
    return torch.cat(columns).T


def null_space(jac: torch.Tensor) -> tuple[int, float, torch.Tensor]:
    """(rank, gap, an orthonormal basis of the null space (d, d - rank)) of jac, from the
    eigendecomposition of jac^T jac (its eigenvalues are the squared singular values). Rows of
    zeros (update entries no pixel moves, as those of units the ReLU switches off) add nothing to
    it and are dropped first."""
    jac = jac[jac.abs().amax(1) > 0]
    evals, evecs = torch.linalg.eigh(jac.T @ jac)
    sv = evals.clamp(min=0).sqrt()
    kept = sv > RANK_TOL * sv[-1]
    rank = int(kept.sum())
    dropped = sv[~kept]
    gap = float(sv[kept].min() / dropped.max()) if len(dropped) and dropped.max() > 0 else float("inf")
    return rank, gap, evecs[:, ~kept]


def neighbour_pairs(shape: tuple[int, ...]) -> torch.Tensor:
    """Index pairs (P, 2) of horizontally and vertically neighbouring pixels of images (n, C, H, W)."""
    idx = torch.arange(int(np.prod(shape))).view(shape)
    return torch.cat([torch.stack([idx[..., :, :-1].reshape(-1), idx[..., :, 1:].reshape(-1)], 1),
                      torch.stack([idx[..., :-1, :].reshape(-1), idx[..., 1:, :].reshape(-1)], 1)])


def oracles(truth: torch.Tensor, basis: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two linearized oracles for true images (n, C, H, W) in pixel units: the truth's
    component outside the null space `basis` kept, the component inside replaced by that of
    each image's flat grey, or chosen to minimize the squared neighbour differences."""
    x = truth.reshape(-1).double()
    flat = truth.double().mean((1, 2, 3), keepdim=True).expand_as(truth).reshape(-1)
    known_flat = x - basis @ (basis.T @ (x - flat))
    pairs = neighbour_pairs(tuple(truth.shape))
    diff_basis = basis[pairs[:, 0]] - basis[pairs[:, 1]]  # D @ basis, D the neighbour-difference operator
    z = torch.linalg.lstsq(diff_basis, -(x[pairs[:, 0]] - x[pairs[:, 1]]).unsqueeze(1)).solution.squeeze(1)
    known_smooth = x + basis @ z
    return dict(zip(ORACLES, (known_flat.view_as(truth), known_smooth.view_as(truth))))


def scores(images: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR and SSIM of images against the truth, both (n, C, H, W) pixels, matched and
    scored as the attacks' outputs are (fedattack.metrics.images.match_and_score)."""
    s = match_and_score(images.clamp(0, 1).float().numpy(), truth.float().numpy())
    return float(s.psnr.mean()), float(s.ssim.mean())


def identified(obs, truth) -> dict:
    """For the update of `truth`'s images: the Jacobian's shape, rank and gap, the flat-image
    baseline's PSNR, and each oracle's (PSNR, SSIM)."""
    pixels = obs.data.to_pixels(truth.images.double())
    jac = jacobian(update_function(obs, truth.labels), pixels.reshape(-1))
    rank, gap, basis = null_space(jac)
    return {"entries": jac.shape[0], "pixels": jac.shape[1], "rank": rank, "gap": gap,
            "flat": float(flat_psnr(pixels.float().numpy()).mean()),
            **{name: scores(img, pixels) for name, img in oracles(pixels, basis).items()}}


def victim_row(case: Case, seed: int, iterations: int | None) -> dict:
    obs, truth, _ = victim(case, seed)
    t0 = time.perf_counter()
    found = identified(obs, truth)
    seconds = time.perf_counter() - t0
    spec = ATTACKS.get("invgrad")
    params = spec.params() if iterations is None else replace(spec.params(), iterations=iterations)
    rec = spec(obs, params, AttackContext(seed=seed))
    inv = scores(obs.data.to_pixels(rec.images.detach().double()), obs.data.to_pixels(truth.images.double()))
    row = {"case": case.name, "victim": seed, "entries": found["entries"], "pixels": found["pixels"],
           "rank": found["rank"], "share": found["rank"] / found["pixels"], "gap": f"{found['gap']:.2g}",
           "flat PSNR": found["flat"]}
    for name, (p, s) in [*((name, found[name]) for name in ORACLES), ("invgrad", inv)]:
        row[f"{name} PSNR"], row[f"{name} SSIM"] = p, s
    row["rank s"] = seconds
    return row


def summary(case: Case, rows: list[dict]) -> dict:
    """Per case: mean of each number over its victims (a count the victims share, as is);
    images at SSIM >= 0.5 per method."""
    out = {"case": case.name, "victim": f"mean of {len(rows)}"}
    for key, value in rows[0].items():
        if key in ("case", "victim", "gap") or not isinstance(value, (int, float)):
            continue
        values = [r[key] for r in rows]
        out[key] = value if isinstance(value, int) and len(set(values)) == 1 else float(np.mean(values))
    out["gap"] = f"{min(float(r['gap']) for r in rows):.2g}"
    for name in (*ORACLES, "invgrad"):
        out[f"{name} SSIM>=0.5"] = f"{sum(r[f'{name} SSIM'] >= 0.5 for r in rows)}/{len(rows)}"
    return out


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    if quick:
        plan, iterations = [lenet_case("sigmoid", size=16, seeds=(0,))], 50
    else:
        plan, iterations = [realistic_case("1 img, 1 step, quickstart CNN, photos"),
                            realistic_case("1 img, 1 step, ConvNet (BatchNorm), photos"),
                            lenet_case("sigmoid"), lenet_case("relu")], None
    rows = []
    for case in plan:
        each = []
        for seed in case.seeds:
            each.append(victim_row(case, seed, iterations))
            print(each[-1], flush=True)
        rows += each + [summary(case, each)]
    return rows
