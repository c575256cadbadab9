"""Scoring a reconstruction against the ground truth of one update, beside a blank guess.

Every score comes with its baseline: what the best constant (flat grey) image reaches on the
same private images. A smooth image scores a fair SSIM and PSNR against a flat guess, so a
number means leakage only where it beats that baseline.

What counts as a leak, per image and per row (one attack on one update):

- an image is **recovered** when its matched reconstruction reaches SSIM >= `success_ssim`
  and beats the best flat image's SSIM on that image;
- a row counts recovered images only when its mean PSNR beats the mean flat-image PSNR by
  more than `success_margin` dB (the PSNR margin); a row within that margin of its baseline
  shows "no leakage beyond a blank guess" and recovers nothing, whatever its SSIM.

A row with at least one recovered image is a leak (`Score.success`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from fedattack.metrics.images import match_and_score, ssim
from fedattack.metrics.labels import label_accuracy
from fedattack.results import DIGITS, Score
from fedattack.threat import DataSpec, Reconstruction, Truth

SUCCESS_MARGIN_DB = 0.5  # the default `audit.success_margin`


def flat_baseline(truth: np.ndarray, levels: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """Per true image (N, C, H, W in [0, 1]): the best PSNR and the best SSIM any constant
    image reaches against it.

    The PSNR-optimal constant is the image's mean pixel (PSNR = -10 log10 of its variance,
    capped at 100 dB like every PSNR here); the SSIM-optimal one is searched over `levels`
    grey levels and the mean."""
    psnrs, ssims = [], []
    for t in np.asarray(truth, dtype=np.float64):
        var = float(np.mean((t - t.mean()) ** 2))
        psnrs.append(100.0 if var == 0 else float(min(100.0, -10 * np.log10(var))))
        grid = np.append(np.linspace(0, 1, levels), t.mean())
        ssims.append(max(ssim(np.full_like(t, v), t) for v in grid))
    return np.array(psnrs), np.array(ssims)


def score(recon: Reconstruction, truth: Truth, spec: DataSpec, success_ssim: float = 0.5,
          success_margin: float = SUCCESS_MARGIN_DB,
          lpips: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Score:
    """Unnormalize to [0, 1], match images optimally, and compute the leakage metrics with
    their flat-image baselines (per image in `Score.per_image`, means in the Score).

    `lpips`: a function (recon, truth) -> per-image LPIPS distances, where LPIPS is available."""
    out = Score(num_images=len(truth.labels))
    if recon.labels is not None:
        out.label_acc = label_accuracy(recon.labels.cpu().numpy(), truth.labels.cpu().numpy())
    if recon.images is not None and len(recon.images):
        r = spec.to_pixels(recon.images.detach().float().cpu()).numpy()
        t = spec.to_pixels(truth.images.detach().float().cpu()).numpy()
        s = match_and_score(r, t)
        s.baseline_psnr, s.baseline_ssim = flat_baseline(t)
        if len(truth.indices) == len(t):
            s.index = np.asarray(truth.indices, dtype=np.int64)
        if len(truth.owners) == len(t):
            s.owner = tuple(truth.owners)
        out.psnr, out.ssim, out.mse = float(s.psnr.mean()), float(s.ssim.mean()), float(s.mse.mean())
        out.baseline_psnr, out.baseline_ssim = float(s.baseline_psnr.mean()), float(s.baseline_ssim.mean())
        # the margin rule at the precision the run directory records, so that leakage.csv agrees
        digits = DIGITS["psnr"]
        margin = round(round(out.psnr, digits) - round(out.baseline_psnr, digits), digits)
        s.recovered = (s.ssim >= success_ssim) & (s.ssim > s.baseline_ssim) & (margin > success_margin)
        out.recovered = int(s.recovered.sum())
        if lpips is not None:
            matched = np.stack([r[j] if j >= 0 else np.full_like(t[0], 0.5) for j in s.match])
            s.lpips = np.asarray(lpips(matched, t), dtype=np.float64)
            out.lpips = float(s.lpips.mean())
        out.per_image = s
    return out
