"""Write a tiny dataset in MNIST's real idx format, for offline runs of the torchvision loader.

The images are scikit-image's bundled LFW crops (resized to 28x28 grey), labels face (1) /
non-face (0), so `data.name=mnist data.root=DIR` exercises torchvision's MNIST reader on real
photographs without a download:

    python simulations/make_tiny_mnist.py data/tiny-mnist
    fedattack run data.name=mnist data.root=data/tiny-mnist
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np


def write_idx(root: Path, test_fraction: float = 0.2, seed: int = 0) -> None:
    import torch
    import torch.nn.functional as F
    from skimage.data import lfw_subset

    images = torch.as_tensor(np.asarray(lfw_subset(), dtype=np.float32))[:, None]
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)[:, 0]
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    labels = np.array([1] * 100 + [0] * 100, dtype=np.uint8)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(len(labels) * test_fraction)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, idx in (("t10k", order[:n_test]), ("train", order[n_test:])):
        n = len(idx)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + pixels[idx].tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels[idx].tobytes())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python simulations/make_tiny_mnist.py OUT_DIR")
    write_idx(Path(sys.argv[1]))
    print(f"wrote {sys.argv[1]}/MNIST/raw (160 train, 40 test images)")
