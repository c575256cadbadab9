"""Image galleries: ground truth above reconstruction, saved as PNG.

Images are scaled up (nearest neighbour, by a whole factor) to at least `MIN_SIDE` pixels a
side, and separated by `PAD` pixels, so the report can place a caption under each column of
a gallery from the PNG's width alone (`columns`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

PAD = 2  # pixels around and between images in a gallery PNG
MIN_SIDE = 64  # images are scaled up to at least this many pixels a side


def scale_for(h: int, w: int) -> int:
    """The whole factor that brings an h x w image to at least MIN_SIDE pixels a side."""
    return max(1, math.ceil(MIN_SIDE / max(1, min(h, w))))


def grid(rows: list[np.ndarray], pad: int = PAD, scale: int | None = None) -> np.ndarray:
    """rows: list of (N, C, H, W) arrays in [0, 1] -> (H', W', 3) uint8 image."""
    n = max(len(r) for r in rows)
    _, h, w = rows[0].shape[1:]
    s = scale or scale_for(h, w)
    hs, ws = h * s, w * s
    out = np.ones(((hs + pad) * len(rows) + pad, (ws + pad) * n + pad, 3))
    for i, r in enumerate(rows):
        for j, img in enumerate(r):
            img = np.repeat(img, 3, 0) if img.shape[0] == 1 else img
            big = np.kron(np.moveaxis(np.asarray(img, dtype=np.float64), 0, -1), np.ones((s, s, 1)))
            y, x = pad + i * (hs + pad), pad + j * (ws + pad)
            out[y:y + hs, x:x + ws] = big
    return (np.clip(out, 0, 1) * 255).round().astype(np.uint8)


def save_pair(path: Path, truth: np.ndarray | None, recon: np.ndarray | None, max_images: int = 16) -> None:
    """Ground truth above reconstruction; either row may be missing (unscored: reconstruction only)."""
    rows = [r[:max_images] for r in (truth, recon) if r is not None]
    Image.fromarray(grid(rows)).save(path)


def columns(path: Path, n: int) -> tuple[int, int, int] | None:
    """(column pitch, image width, image height incl. both rows) in pixels of a gallery PNG of
    `n` columns, or None if the file is missing or unreadable."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (OSError, ValueError):
        return None
    if n <= 0 or (width - PAD) % n:
        return None
    pitch = (width - PAD) // n
    return pitch, pitch - PAD, height
