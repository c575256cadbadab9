"""Image metrics on [0, 1] pixels (scikit-image) and optimal matching (scipy)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from fedattack.results import ImageScores


def _hwc(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(x, dtype=np.float64), 0, -1)  # (C,H,W) -> (H,W,C)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two (C, H, W) images in [0, 1]; identical images give +inf capped at 100."""
    mse = mean_squared_error(_hwc(a), _hwc(b))
    if mse == 0:
        return 100.0
    return float(min(100.0, peak_signal_noise_ratio(_hwc(a), _hwc(b), data_range=1.0)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _hwc(a), _hwc(b)
    win = min(7, a.shape[0], a.shape[1])
    win -= 1 - win % 2  # odd
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=-1, win_size=max(win, 3)))


def match_and_score(recon: np.ndarray, truth: np.ndarray) -> ImageScores:
    """Match reconstructions to ground truth by optimal assignment on PSNR, then score.

    recon: (M, C, H, W), truth: (N, C, H, W), both in [0, 1]. A truth image no reconstruction
    is matched to (M < N) is scored as a flat grey (0.5) guess: the attack told nothing about it,
    which is what a blank guess tells (it scores at or below the best flat image's baseline, so it
    never counts as leaked).
    """
    n, m = len(truth), len(recon)
    p = np.array([[psnr(recon[j], truth[i]) for j in range(m)] for i in range(n)]).reshape(n, m)
    rows, cols = linear_sum_assignment(-p) if m else (np.array([], int), np.array([], int))
    match = np.full(n, -1)
    match[rows] = cols
    out_p, out_s, out_m = np.zeros(n), np.zeros(n), np.zeros(n)
    for i in range(n):
        if match[i] >= 0:
            r = recon[match[i]]
            out_p[i] = p[i, match[i]]
            out_s[i] = ssim(r, truth[i])
            out_m[i] = float(np.mean((r - truth[i]) ** 2))
        else:
            grey = np.full_like(truth[i], 0.5)
            out_p[i], out_s[i] = psnr(grey, truth[i]), ssim(grey, truth[i])
            out_m[i] = float(np.mean((grey - truth[i]) ** 2))
    return ImageScores(match=match, psnr=out_p, ssim=out_s, mse=out_m)
