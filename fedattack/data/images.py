"""One split of an image dataset behind a small interface (`ImageData`), and the helpers
the loaders share: the data spec from native channels and statistics, arrays to ImageData,
a stratified train/test split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fedattack.errors import DataError
from fedattack.threat import DataSpec, Truth

GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})  # more than 8 bits a pixel, one channel


def pil_pixels(img, channels: int, where: str, field: str = "data.root") -> np.ndarray:
    """A PIL image as float32 pixels in [0, 1], (H, W) for channels=1 or (H, W, 3).

    8-bit modes go through PIL's own conversion to L or RGB. 16-bit greyscale (I;16, I;16B, ...) is
    divided by 65535. 32-bit integer images (I, as some Pillow versions open 16-bit PNGs) are divided
    by 65535 too when every value lies in 0..65535, and float images (F) are taken as they are when
    every value lies in 0..1; other values have no known scale and are refused (`field`: `where`)."""
    mode = img.mode
    if mode not in WIDE_MODES:
        return np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / 255.0
    raw = np.asarray(img)
    lo, hi = (float(raw.min()), float(raw.max())) if raw.size else (0.0, 0.0)
    if mode == "F":
        if not (np.isfinite(raw).all() and 0.0 <= lo and hi <= 1.0):
            raise DataError(f"{field}: {where} is a float image (mode F) with values {lo:g}..{hi:g}; only values "
                            "in 0..1 have a known scale: convert it to 8 or 16 bits")
        arr = raw.astype(np.float32)
    else:
        if lo < 0 or hi > 65535:
            raise DataError(f"{field}: {where} is a 32-bit integer image (mode {mode}) with values {lo:g}..{hi:g}; "
                            "only values in 0..65535 (16 bits) have a known scale: convert it to 8 or 16 bits")
        arr = raw.astype(np.float32) / 65535.0
    return arr if channels == 1 else np.repeat(arr[..., None], 3, axis=-1)


@dataclass
class ImageData:
    """A split of an image dataset: labels for partitioning, images fetched by index.

    `fetch(i)` returns a float tensor (C, H, W) in [0, 1] at the dataset's native size;
    `get(indices)` resizes, fixes channels and normalizes for the model.
    """

    fetch: Callable[[int], torch.Tensor]
    targets: np.ndarray
    spec: DataSpec

    def __len__(self) -> int:
        return len(self.targets)

    def pixels(self, indices) -> torch.Tensor:
        """Images in [0, 1] at the configured size and channels."""
        c, h, w = self.spec.shape
        out = []
        for i in indices:
            x = self.fetch(int(i))
            if x.shape[0] != c:
                x = x.mean(0, keepdim=True) if c == 1 else x.expand(3, -1, -1)
            if x.shape[1:] != (h, w):
                x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
            out.append(x.clamp(0, 1))
        return torch.stack(out) if out else torch.empty(0, c, h, w)

    def get(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        idx = [int(i) for i in indices]
        x = self.spec.normalize(self.pixels(idx))
        y = torch.as_tensor(self.targets[idx], dtype=torch.long)
        return x, y

    def truth(self, indices) -> Truth:
        x, y = self.get(indices)
        return Truth(images=x, labels=y, indices=tuple(int(i) for i in indices))


@dataclass
class Splits:
    train: ImageData
    test: ImageData


def image_spec(cfg, native_channels: int, num_classes: int, mean, std) -> DataSpec:
    c = cfg.channels or native_channels
    if c != native_channels:
        grey = float(np.mean(mean)), float(np.mean(std))
        mean, std = ((grey[0],), (grey[1],)) if c == 1 else ((mean[0],) * 3, (std[0],) * 3)
    return DataSpec(shape=(c, cfg.image_size, cfg.image_size), num_classes=num_classes,
                    mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


def from_array(images: np.ndarray, targets: np.ndarray, spec: DataSpec) -> ImageData:
    """images: (N, H, W) or (N, H, W, C) (or (N, C, H, W)), C 1 or 3, floats in [0, 1] or uint8;
    one label per image. Anything else is a DataError naming data.name (a dataset of the user's own)."""
    arr = torch.as_tensor(images)
    given, targets = tuple(arr.shape), np.asarray(targets)
    if arr.dtype == torch.uint8:
        arr = arr.float() / 255.0
    arr = arr.float()
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.permute(0, 3, 1, 2)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise DataError(f"data.name: images of shape {given}; a dataset gives (N, H, W) or "
                        "(N, H, W, C) images with C 1 or 3")
    if len(arr) != len(targets):
        raise DataError(f"data.name: {len(arr)} images and {len(targets)} labels; a dataset gives one label per image")
    if targets.size and (not np.issubdtype(targets.dtype, np.number) or (targets != np.round(targets)).any()):
        raise DataError(f"data.name: labels of type {targets.dtype} with non-integer values; a dataset gives integer "
                        "class labels")
    if len(arr) and not (torch.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1):
        raise DataError(f"data.name: pixel values {float(arr.min()):g}..{float(arr.max()):g}"
                        f"{' (or not finite)' if not torch.isfinite(arr).all() else ''}; a dataset gives floats "
                        "in [0, 1] or uint8")
    arr = arr.contiguous()
    return ImageData(fetch=lambda i: arr[i], targets=targets.astype(np.int64), spec=spec)


def stratified_split(targets: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        k = min(max(1, int(round(len(idx) * test_fraction))), len(idx) - 1)  # a class keeps a training image
        test.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(test, dtype=np.int64))
