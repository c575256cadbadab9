"""Image datasets behind one small interface, `ImageData`.

Loaders are the real ones (torchvision's MNIST, FashionMNIST, CIFAR-10/100, ImageFolder,
Hugging Face datasets as `hf:<id>`); the default `lfw-subset`, `digits` and `photos` ship
inside scikit-image and scikit-learn, so fedattack runs offline. A configured dataset whose
files are absent is a `DataError`, never a silent substitute.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from fedattack.data.hf import is_hf, load_hf
from fedattack.errors import ConfigError, DataError
from fedattack.registry import Registry
from fedattack.threat import DataSpec, Truth

DATASETS: Registry[Callable[..., "Splits"]] = Registry("dataset", "data.name")


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


def _spec(cfg, native_channels: int, num_classes: int, mean, std) -> DataSpec:
    c = cfg.channels or native_channels
    if c != native_channels:
        grey = float(np.mean(mean)), float(np.mean(std))
        mean, std = ((grey[0],), (grey[1],)) if c == 1 else ((mean[0],) * 3, (std[0],) * 3)
    return DataSpec(shape=(c, cfg.image_size, cfg.image_size), num_classes=num_classes,
                    mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))


def _from_array(images: np.ndarray, targets: np.ndarray, spec: DataSpec) -> ImageData:
    """images: (N, H, W) or (N, H, W, C) floats in [0, 1] or uint8."""
    arr = torch.as_tensor(images)
    if arr.dtype == torch.uint8:
        arr = arr.float() / 255.0
    arr = arr.float()
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.permute(0, 3, 1, 2)
    arr = arr.contiguous()
    return ImageData(fetch=lambda i: arr[i], targets=np.asarray(targets, dtype=np.int64), spec=spec)


def _stratified_split(targets: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(targets):
        idx = rng.permutation(np.flatnonzero(targets == c))
        k = max(1, int(round(len(idx) * test_fraction)))
        test.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.array(train)), np.sort(np.array(test))


@DATASETS.register("lfw-subset", doc="200 LFW crops bundled with scikit-image (face / non-face), offline")
def lfw_subset(cfg, seed: int) -> Splits:
    from skimage.data import lfw_subset as _load

    images = np.asarray(_load(), dtype=np.float32)  # (200, 25, 25) in [0, 1]
    targets = np.array([1] * 100 + [0] * 100)  # scikit-image: first 100 faces, then 100 non-faces
    mean, std = (float(images.mean()),), (float(images.std()),)
    spec = _spec(cfg, 1, 2, mean, std)
    tr, te = _stratified_split(targets, cfg.test_fraction, seed)
    return Splits(_from_array(images[tr], targets[tr], spec), _from_array(images[te], targets[te], spec))


@DATASETS.register("digits", doc="1797 8x8 handwritten digits bundled with scikit-learn (10 classes), offline")
def digits(cfg, seed: int) -> Splits:
    """scikit-learn's copy of the UCI optical-recognition digits test set (Alpaydin and Kaynak 1998):
    8x8 grey images with values 0-16 (divided by 16 here), labels 0-9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    targets = np.asarray(bunch.target, dtype=np.int64)
    spec = _spec(cfg, 1, 10, (float(images.mean(dtype=np.float64)),), (float(images.std(dtype=np.float64)),))
    tr, te = _stratified_split(targets, cfg.test_fraction, seed)
    return Splits(_from_array(images[tr], targets[tr], spec), _from_array(images[te], targets[te], spec))


# `photos`: natural RGB photos that ship inside the scikit-image wheel (no pooch download), cut
# into 64x64 crops on a fixed 4 x 7 grid spread evenly over each photo. The smallest photo
# (chelsea, 300 x 451) fits 4 x 7 crops of 64 without overlap, so no two crops share a pixel.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "motorcycle")
PHOTO_CROP = 64
PHOTO_GRID = (4, 7)


def _photo(name: str) -> np.ndarray:
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]  # the left view of the stereo pair
    return getattr(skimage.data, name)()


def photo_crops() -> tuple[np.ndarray, np.ndarray]:
    """(N, 64, 64, 3) uint8 crops and their labels (the index of the source photo in PHOTOS)."""
    crops, labels = [], []
    for label, name in enumerate(PHOTOS):
        img = np.asarray(_photo(name))[..., :3]
        h, w = img.shape[:2]
        rows = np.round(np.linspace(0, h - PHOTO_CROP, PHOTO_GRID[0])).astype(int)
        cols = np.round(np.linspace(0, w - PHOTO_CROP, PHOTO_GRID[1])).astype(int)
        for r in rows:
            for c in cols:
                crops.append(img[r:r + PHOTO_CROP, c:c + PHOTO_CROP])
                labels.append(label)
    return np.stack(crops), np.asarray(labels, dtype=np.int64)


@DATASETS.register("photos", doc=f"{len(PHOTOS) * PHOTO_GRID[0] * PHOTO_GRID[1]} 64x64 RGB crops of scikit-image's "
                                 f"{len(PHOTOS)} bundled photos (label: which photo), offline")
def photos(cfg, seed: int) -> Splits:
    """Natural-photo crops: astronaut, chelsea (the cat), coffee, rocket, hubble_deep_field,
    immunohistochemistry and the left motorcycle view, 28 crops each."""
    crops, targets = photo_crops()
    images = crops.astype(np.float32) / 255.0  # (196, 64, 64, 3)
    mean, std = images.mean(axis=(0, 1, 2), dtype=np.float64), images.std(axis=(0, 1, 2), dtype=np.float64)
    spec = _spec(cfg, 3, len(PHOTOS), tuple(mean), tuple(std))
    tr, te = _stratified_split(targets, cfg.test_fraction, seed)
    return Splits(_from_array(images[tr], targets[tr], spec), _from_array(images[te], targets[te], spec))


def _require_root(cfg, name: str, hint: str) -> Path:
    if not cfg.root:
        raise ConfigError("data.root", f"dataset '{name}' needs data.root (a folder); {hint}")
    root = Path(cfg.root).expanduser()
    if not root.exists() and not cfg.download:
        raise DataError(f"data.root: {root} does not exist; {hint}")
    return root


def _torchvision_split(cls, root: Path, train: bool, download: bool, name: str, hint: str):
    try:
        return cls(root=str(root), train=train, download=download)
    except RuntimeError as exc:
        raise DataError(f"data.root: {name} not found under {root} ({exc}); {hint}") from None


def _wrap_torchvision(ds: Any, spec: DataSpec) -> ImageData:
    data = getattr(ds, "data")
    arr = torch.as_tensor(np.asarray(data))
    if arr.ndim == 3:  # (N, H, W) uint8
        arr = arr[:, None]
    else:  # (N, H, W, C) uint8
        arr = arr.permute(0, 3, 1, 2)
    arr = arr.contiguous()
    return ImageData(fetch=lambda i: arr[i].float() / 255.0, targets=np.asarray(ds.targets, dtype=np.int64),
                     spec=spec)


def _torchvision_dataset(name: str, cls_name: str, channels: int, classes: int, mean, std, hint: str):
    def loader(cfg, seed: int) -> Splits:
        import torchvision.datasets as tvd

        root = _require_root(cfg, name, hint)
        cls = getattr(tvd, cls_name)
        spec = _spec(cfg, channels, classes, mean, std)
        train = _torchvision_split(cls, root, True, cfg.download, name, hint)
        test = _torchvision_split(cls, root, False, cfg.download, name, hint)
        return Splits(_wrap_torchvision(train, spec), _wrap_torchvision(test, spec))

    loader.__doc__ = f"torchvision {cls_name} from data.root ({hint})"
    return loader


_MNIST_HINT = "put the four raw idx files in <root>/{}/raw/ or set data.download=true on a machine with internet"
DATASETS.register("mnist", _torchvision_dataset(
    "mnist", "MNIST", 1, 10, (0.1307,), (0.3081,), _MNIST_HINT.format("MNIST")))
DATASETS.register("fashion-mnist", _torchvision_dataset(
    "fashion-mnist", "FashionMNIST", 1, 10, (0.2860,), (0.3530,), _MNIST_HINT.format("FashionMNIST")))
_CIFAR_HINT = "extract {} into <root>/ or set data.download=true on a machine with internet"
DATASETS.register("cifar10", _torchvision_dataset(
    "cifar10", "CIFAR10", 3, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    _CIFAR_HINT.format("cifar-10-python.tar.gz")))
DATASETS.register("cifar100", _torchvision_dataset(
    "cifar100", "CIFAR100", 3, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    _CIFAR_HINT.format("cifar-100-python.tar.gz")))


@DATASETS.register("imagefolder", doc="your own images: data.root/<class>/<image>, one folder per class")
def imagefolder(cfg, seed: int) -> Splits:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    hint = "point data.root at a folder with one sub-folder of images per class"
    root = _require_root(cfg, "imagefolder", hint)
    try:
        ds = ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"data.root: no images found under {root} ({exc}); {hint}") from None
    targets = np.asarray(ds.targets, dtype=np.int64)
    channels = cfg.channels or 3
    spec = _spec(cfg, channels, len(ds.classes), (0.5,) * channels, (0.5,) * channels)

    def fetch(i: int) -> torch.Tensor:
        img = Image.open(ds.samples[i][0]).convert("RGB" if channels == 3 else "L")
        arr = torch.as_tensor(np.asarray(img, dtype=np.float32) / 255.0)
        return arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1)

    tr, te = _stratified_split(targets, cfg.test_fraction, seed)
    return Splits(ImageData(lambda i: fetch(int(tr[i])), targets[tr], spec),
                  ImageData(lambda i: fetch(int(te[i])), targets[te], spec))


@lru_cache(maxsize=4)
def _load_cached(key: str, seed: int) -> Splits:
    from fedattack.config import DataConfig
    import json

    cfg = DataConfig(**json.loads(key))
    if is_hf(cfg.name):
        return load_hf(cfg, seed)
    return DATASETS.get(cfg.name)(cfg, seed)


def load_dataset(cfg, seed: int = 0) -> Splits:
    """Load (and cache per process) the configured dataset's train and test splits."""
    import json
    from dataclasses import asdict

    return _load_cached(json.dumps(asdict(cfg), sort_keys=True), seed)
