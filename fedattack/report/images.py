"""Image galleries: ground truth above reconstruction, saved as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def grid(rows: list[np.ndarray], pad: int = 1, scale: int = 2) -> np.ndarray:
    """rows: list of (N, C, H, W) arrays in [0, 1] -> (H', W', 3) uint8 image."""
    n = max(len(r) for r in rows)
    c, h, w = rows[0].shape[1:]
    out = np.ones(((h + pad) * len(rows) + pad, (w + pad) * n + pad, 3))
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            img = np.repeat(img, 3, 0) if img.shape[0] == 1 else img
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y:y + h, x:x + w] = np.moveaxis(img, 0, -1)
    out = np.kron(out, np.ones((scale, scale, 1)))
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def save_pair(path: Path, truth: np.ndarray | None, recon: np.ndarray | None, max_images: int = 16) -> None:
    """Ground truth above reconstruction; either row may be missing (unscored: reconstruction only)."""
    rows = [r[:max_images] for r in (truth, recon) if r is not None]
    Image.fromarray(grid(rows)).save(path)
