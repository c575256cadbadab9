"""Image datasets behind one small interface, `ImageData`.

Loaders are the real ones (torchvision's MNIST, FashionMNIST, CIFAR-10/100, ImageFolder,
Hugging Face datasets as `hf:<id>`); the default `lfw-subset`, `digits` and `photos` ship
inside scikit-image and scikit-learn, so fedattack runs offline. A configured dataset whose
files are absent is a `DataError`, never a silent substitute.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Callable
from urllib.error import URLError

import numpy as np
import torch

from fedattack.data.hf import is_hf, load_hf
from fedattack.data.images import ImageData, Splits, from_array, image_spec, pil_pixels, stratified_split
from fedattack.errors import ConfigError, DataError, FedattackError, first_line
from fedattack.registry import Registry, own_function
from fedattack.schema import DataConfig
from fedattack.threat import DataSpec

DATASETS: Registry[Callable[..., "Splits"]] = Registry("dataset", "data.name", accepts=own_function(2, "dataset"))


@DATASETS.register("lfw-subset", doc="200 LFW crops bundled with scikit-image (face / non-face), offline")
def lfw_subset(cfg, seed: int) -> Splits:
    from skimage.data import lfw_subset as _load

    images = np.asarray(_load(), dtype=np.float32)  # (200, 25, 25) in [0, 1]
    targets = np.array([1] * 100 + [0] * 100)  # scikit-image: first 100 faces, then 100 non-faces
    mean, std = (float(images.mean()),), (float(images.std()),)
    spec = image_spec(cfg, 1, 2, mean, std)
    tr, te = stratified_split(targets, cfg.test_fraction, seed)
    return Splits(from_array(images[tr], targets[tr], spec), from_array(images[te], targets[te], spec))


@DATASETS.register("digits", doc="1797 8x8 handwritten digits bundled with scikit-learn (10 classes), offline")
def digits(cfg, seed: int) -> Splits:
    """scikit-learn's copy of the UCI optical-recognition digits test set (Alpaydin and Kaynak 1998):
    8x8 grey images with values 0-16 (divided by 16 here), labels 0-9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # (1797, 8, 8) in [0, 1]
    targets = np.asarray(bunch.target, dtype=np.int64)
    spec = image_spec(cfg, 1, 10, (float(images.mean(dtype=np.float64)),), (float(images.std(dtype=np.float64)),))
    tr, te = stratified_split(targets, cfg.test_fraction, seed)
    return Splits(from_array(images[tr], targets[tr], spec), from_array(images[te], targets[te], spec))


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
    spec = image_spec(cfg, 3, len(PHOTOS), tuple(mean), tuple(std))
    tr, te = stratified_split(targets, cfg.test_fraction, seed)
    return Splits(from_array(images[tr], targets[tr], spec), from_array(images[te], targets[te], spec))


def _require_root(cfg, name: str, hint: str) -> Path:
    if not cfg.root:
        raise ConfigError("data.root", f"dataset '{name}' needs data.root (a folder); {hint}")
    root = Path(cfg.root).expanduser()
    if not root.exists() and not cfg.download:
        raise DataError(f"data.root: {root} does not exist; {hint}")
    return root


IDX_FILES = {"images": 3, "labels": 1}  # MNIST's idx files and the dimensions each holds


def _idx_problem(path: Path, dims: int) -> str | None:
    """Why an MNIST idx file of unsigned bytes cannot be read, or None when its header and size agree."""
    data = path.read_bytes()
    if not data:
        return f"{path.name} is empty"
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8 or data[3] != dims:
        return (f"{path.name} starts with {data[:4].hex() or 'nothing'}, not an idx file's magic number "
                f"0000080{dims} ({dims}-dimensional unsigned bytes)")
    header = 4 + 4 * dims
    if len(data) < header:
        return f"{path.name} ends inside its header ({len(data)} bytes)"
    sizes = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    if len(data) != header + int(np.prod(sizes)):
        return (f"{path.name} is {len(data)} bytes but its header promises {' x '.join(map(str, sizes))} values "
                f"({header + int(np.prod(sizes))} bytes)")
    return None


def _check_idx_files(cls, root: Path, train: bool) -> None:
    """Read the split's idx files' headers before torchvision does: its asserts say nothing."""
    raw = root / cls.__name__ / "raw"
    for kind, dims in IDX_FILES.items():
        path = raw / f"{'train' if train else 't10k'}-{kind}-idx{dims}-ubyte"
        if not path.is_file():
            continue  # absent: torchvision says "not found", or downloads it
        try:
            problem = _idx_problem(path, dims)
        except OSError as exc:
            problem = f"{path.name}: {exc.strerror or type(exc).__name__}"
        if problem:
            raise DataError(f"data.root: {raw} is not readable as MNIST idx files: {problem}; replace the file with "
                            "the original or set data.download=true after removing it")


def _cifar_files_present(cls, root: Path) -> bool:
    folder = root / cls.base_folder
    names = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return all((folder / name).is_file() for name in names)


def _torchvision_split(cls, root: Path, train: bool, download: bool, name: str, hint: str):
    from torchvision.datasets import MNIST

    if issubclass(cls, MNIST):
        _check_idx_files(cls, root, train)
    # the folders a download may make (torchvision's <root>/<Class>/raw, root and its missing parents)
    made = [p for p in (root / cls.__name__ / "raw", root / cls.__name__, root, *root.parents) if not p.exists()]

    def download_failed(exc: BaseException) -> DataError:
        for p in made:  # deepest first: those the failed download left empty
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        why = first_line(exc).rstrip(":")
        return DataError(f"data.download: downloading {name} to {root} failed ({why}); without internet, put "
                         f"the files there yourself ({hint})")

    try:
        return cls(root=str(root), train=train, download=download)
    except RuntimeError as exc:
        if download and "download" in str(exc).lower():  # torchvision's message lists every mirror it tried
            raise download_failed(exc) from None
        if hasattr(cls, "base_folder") and _cifar_files_present(cls, root):
            raise DataError(f"data.root: {root / cls.base_folder} holds {name}'s files, but they do not match the "
                            "official release's checksums (torchvision checks them); extract the original "
                            f"archive there{' or remove them and set data.download=true' if not download else ''}"
                            ) from None
        if "not found" in str(exc).lower():
            raise DataError(f"data.root: {name} not found under {root} ({first_line(exc)}); {hint}") from None
        raise DataError(f"data.root: {name}'s files under {root} could not be read ({first_line(exc)}); {hint}"
                        ) from None
    except (AssertionError, ValueError, TypeError, EOFError, OSError, IndexError) as exc:
        if download and isinstance(exc, URLError):  # CIFAR's download has no mirrors: urllib's own error
            raise download_failed(exc) from None
        why = first_line(exc) or type(exc).__name__
        raise DataError(f"data.root: {name}'s files under {root} could not be read ({why}); {hint}") from None


def _wrap_torchvision(ds: Any, spec: DataSpec, where: str) -> ImageData:
    data = getattr(ds, "data")
    if len(data) != len(ds.targets):  # torchvision reads image and label files apart and does not compare them
        raise DataError(f"data.root: {where} holds {len(data)} images but {len(ds.targets)} labels; the image and "
                        "label files do not belong together")
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
        spec = image_spec(cfg, channels, classes, mean, std)
        train = _torchvision_split(cls, root, True, cfg.download, name, hint)
        test = _torchvision_split(cls, root, False, cfg.download, name, hint)
        return Splits(_wrap_torchvision(train, spec, f"{name}'s training split under {root}"),
                      _wrap_torchvision(test, spec, f"{name}'s test split under {root}"))

    loader.__doc__ = f"torchvision {cls_name} from data.root ({hint})"
    return loader


_MNIST_HINT = ("put the four raw idx files, un-gzipped (train-images-idx3-ubyte, ...), in <root>/{}/raw/ or set "
               "data.download=true on a machine with internet")
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


def _unreadable(path: str, exc: BaseException) -> DataError:
    """A file of an image folder that PIL cannot read, as the one line that names it."""
    return DataError(f"data.root: {path} is not an image PIL can read ({type(exc).__name__}); remove it or convert it")


def _check_image(path: str) -> None:
    """Open the file and check its structure without decoding it (PIL's verify: a PNG's chunk
    checksums, so a cut or damaged file is found), a fraction of a millisecond for a small image;
    a JPEG, whose header alone verify reads, is decoded at 1/8 scale (a cut file ends early);
    32-bit images (modes I and F) are decoded to check that their values have a known scale."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode, fmt = img.mode, img.format
            img.verify()
        if fmt == "JPEG":  # verify reads a JPEG's header only: decode it at 1/8 scale, which reads every byte
            with Image.open(path) as img:
                img.draft(img.mode, (max(1, img.width // 8), max(1, img.height // 8)))
                img.load()
        if mode in ("I", "F"):  # 32 bits a pixel: read now whether its values have a known scale
            with Image.open(path) as img:
                pil_pixels(img, 1, path)
    except (OSError, ValueError, SyntaxError) as exc:  # verify raises SyntaxError for some broken files
        raise _unreadable(path, exc) from None


@DATASETS.register("imagefolder", doc="your own images: data.root/<class>/<image>, one folder per class")
def imagefolder(cfg, seed: int) -> Splits:
    from PIL import Image
    from torchvision.datasets import ImageFolder

    hint = "point data.root at a folder with one sub-folder of images per class"
    root = _require_root(cfg, "imagefolder", hint)
    try:
        ds = ImageFolder(str(root))
    except (OSError, RuntimeError) as exc:  # missing, not a folder, unreadable, no images
        said = first_line(exc)
        what = ("a class folder holds no images" if "for the classes" in said else f"no images found under {root}")
        raise DataError(f"data.root: {what} ({said}); {hint}") from None
    if len(ds.classes) < 2:  # one class: cross-entropy is 0 whatever the model, so every update is zero
        raise DataError(f"data.root: {root} holds one class folder ({ds.classes[0]}); a classifier needs at least "
                        f"2 classes: {hint}")
    for path, _ in ds.samples:  # every file now, not when a client first trains on it
        _check_image(path)
    targets = np.asarray(ds.targets, dtype=np.int64)
    channels = cfg.channels or 3
    spec = image_spec(cfg, channels, len(ds.classes), (0.5,) * channels, (0.5,) * channels)

    def fetch(i: int) -> torch.Tensor:
        path = ds.samples[i][0]
        try:
            with Image.open(path) as img:
                arr = torch.as_tensor(pil_pixels(img, channels, path))
        except (OSError, ValueError) as exc:
            raise _unreadable(path, exc) from None
        return arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1)

    tr, te = stratified_split(targets, cfg.test_fraction, seed)
    if len(te) == 0:
        raise DataError(f"data.root: {len(targets)} images in {root}, one per class: too few to hold out a test "
                        "split; put at least 2 images in a class folder")
    return Splits(ImageData(lambda i: fetch(int(tr[i])), targets[tr], spec),
                  ImageData(lambda i: fetch(int(te[i])), targets[te], spec))


def check_labels(splits: Splits, field: str, name: str) -> None:
    """Every label of both splits is one of the dataset's classes 0..num_classes-1 (a label file
    may hold any byte; a dataset of the user's own may return anything)."""
    for split, data in (("training", splits.train), ("test", splits.test)):
        targets = np.asarray(data.targets)
        if not targets.size or not np.issubdtype(targets.dtype, np.number):
            continue
        n = data.spec.num_classes
        bad = np.flatnonzero((targets < 0) | (targets >= n) | (targets != np.round(targets)))
        if bad.size:
            i = int(bad[0])
            value = targets[i].item()
            more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
            raise DataError(f"{field}: {name}'s {split} split: sample {i} has the label {value!r}{more}, outside the "
                            f"dataset's classes 0..{n - 1}")


def check_images(splits: Splits, field: str, name: str) -> None:
    """The first and last image of each split are what the model's inputs are made from: a
    (C, H, W) tensor, C 1 or 3, of finite values in [0, 1] (a dataset of the user's own may build
    its ImageData any way); a fetch that fails there is one line too."""
    for split, data in (("training", splits.train), ("test", splits.test)):
        for i in sorted({0, len(data) - 1} - {-1}):
            try:
                x = data.fetch(i)
            except FedattackError:
                raise
            except Exception as exc:  # noqa: BLE001 - any error of the user's fetch
                raise DataError(f"{field}: {name}'s {split} split: fetching sample {i} of {len(data)} (one per "
                                f"label) raised {type(exc).__name__}: {first_line(exc)[:160]}") from None
            shape = tuple(getattr(x, "shape", ()))
            ok = isinstance(x, torch.Tensor) and x.ndim == 3 and shape[0] in (1, 3)
            if not ok or not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
                what = (f"a {type(x).__name__} of shape {shape}" if not ok else
                        f"values {float(x.min()):g}..{float(x.max()):g}")
                raise DataError(f"{field}: {name}'s {split} split: sample {i} is {what}; an image is a float tensor "
                                "(C, H, W), C 1 or 3, of finite values in [0, 1]")


@lru_cache(maxsize=4)
def load_dataset(cfg: DataConfig, *, seed: int = 0) -> Splits:
    """Load the configured dataset's train and test splits; cached per process under
    (cfg, seed), a frozen DataConfig being its own key. Every label is checked to be one of
    the dataset's classes."""
    splits, field = _load(cfg, seed)
    check_labels(splits, field, cfg.name)
    check_images(splits, field, cfg.name)
    return splits


def _load(cfg: DataConfig, seed: int) -> tuple[Splits, str]:
    """The configured dataset's splits, and the field that names where their labels come from."""
    if is_hf(cfg.name):
        return load_hf(cfg, seed), "data.label_key"
    loader = DATASETS.get(cfg.name)
    if ":" not in cfg.name:
        return loader(cfg, seed), "data.root" if cfg.root else "data.name"
    try:  # a dataset of the user's own (module:attr): what goes wrong in it is one line naming it
        splits = loader(cfg, seed)
    except FedattackError:
        raise
    except Exception as exc:  # noqa: BLE001 - any error of the user's function
        why = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise DataError(f"data.name: {cfg.name} raised {type(exc).__name__}: {why} (a dataset is called as "
                        "fn(cfg: DataConfig, seed) and returns Splits)") from None
    if not isinstance(splits, Splits):
        raise DataError(f"data.name: {cfg.name} returned {type(splits).__name__}, not Splits (a dataset is called as "
                        "fn(cfg: DataConfig, seed) and returns fedattack.data.images.Splits)")
    return splits, "data.name"
