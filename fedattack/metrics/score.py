"""Scoring a reconstruction against the ground truth of one update."""

from __future__ import annotations

import numpy as np

from fedattack.metrics.images import match_and_score, ssim
from fedattack.metrics.labels import label_accuracy
from fedattack.results import Score
from fedattack.threat import DataSpec, Reconstruction, Truth


def flat_baseline(truth: np.ndarray, levels: int = 21) -> np.ndarray:
    """The best SSIM any constant grey image reaches against each true image.

    Smooth images score a high SSIM against a flat guess, so a reconstruction must beat the
    best flat guess to count as recovered."""
    grid = np.linspace(0, 1, levels)
    return np.array([max(ssim(np.full_like(t, v), t) for v in grid) for t in truth])


def score(recon: Reconstruction, truth: Truth, spec: DataSpec, success_ssim: float = 0.5) -> Score:
    """Unnormalize to [0, 1], match images optimally, and compute the leakage metrics."""
    out = Score(num_images=len(truth.labels))
    if recon.labels is not None:
        out.label_acc = label_accuracy(recon.labels.cpu().numpy(), truth.labels.cpu().numpy())
    if recon.images is not None and len(recon.images):
        r = spec.to_pixels(recon.images.detach().float().cpu()).numpy()
        t = spec.to_pixels(truth.images.detach().float().cpu()).numpy()
        s = match_and_score(r, t)
        out.per_image = s
        out.psnr, out.ssim, out.mse = float(s.psnr.mean()), float(s.ssim.mean()), float(s.mse.mean())
        out.recovered = int(np.sum((s.ssim >= success_ssim) & (s.ssim > flat_baseline(t))))
    return out
