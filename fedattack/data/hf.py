"""`data.name=hf:<dataset>`: a Hugging Face dataset as `ImageData`.

`<dataset>` is what `datasets.load_dataset` takes (a Hub id such as `uoft-cs/cifar10`, or a
local folder laid out as a dataset repository: data files, or parquet shards under `data/`),
or a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`. flwr-datasets'
`FederatedDataset` loads through the same `datasets.load_dataset`; fedattack calls it directly
and partitions the training split with `partition.name` like every other dataset, so one seed
fixes the partitions whatever the data source.

Offline by default: unless `data.download=true`, the Hub is not contacted and the dataset is
read from the Hugging Face cache (`data.root` when set, else `HF_DATASETS_CACHE` or
`~/.cache/huggingface/datasets`). A dataset that is neither cached nor local is a one-line
`DataError` naming `data.name`.

Columns: the image column is `data.image_key`, else the first of `img`, `image`,
`pixel_values`, `images`, else the first column of type `datasets.Image`; the label column is
`data.label_key`, else the first of `label`, `fine_label`, `labels`, `coarse_label`, else the
first `ClassLabel` column. Splits: `train` (else the first split) for training, `test` when the
dataset has one, else a stratified `data.test_fraction` of the training split. Normalization
constants are per-channel means and standard deviations of up to 512 training images drawn
with the run's seed.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from fedattack.data.images import GREY_MODES, ImageData, Splits, image_spec, pil_pixels, stratified_split
from fedattack.errors import ConfigError, DataError, first_line

PREFIX = "hf:"
IMAGE_KEYS = ("img", "image", "pixel_values", "images")
LABEL_KEYS = ("label", "fine_label", "labels", "coarse_label")
NORM_SAMPLES = 512


def is_hf(name: str) -> bool:
    return name.startswith(PREFIX)


@contextlib.contextmanager
def _hub_access(allowed: bool):
    """Hub offline mode (read only the cache) unless downloads are allowed; quiet progress bars, and
    no log of each retry (the one-line error says why the download failed)."""
    import datasets
    import datasets.config as dconfig
    import huggingface_hub.constants as hconstants
    from huggingface_hub.utils import logging as hlogging

    old = dconfig.HF_HUB_OFFLINE, hconstants.HF_HUB_OFFLINE
    bars = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity(), hlogging.get_verbosity()
    if not allowed:
        dconfig.HF_HUB_OFFLINE = hconstants.HF_HUB_OFFLINE = True
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    hlogging.set_verbosity_error()
    try:
        yield
    finally:
        dconfig.HF_HUB_OFFLINE, hconstants.HF_HUB_OFFLINE = old
        datasets.enable_progress_bars() if bars else None
        datasets.logging.set_verbosity(verbosity[0])
        hlogging.set_verbosity(verbosity[1])


def _saved_to_disk(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file())


def open_dataset(ref: str, cfg):
    """The DatasetDict behind `hf:<ref>` (a lone Dataset becomes its `train` split)."""
    import datasets

    where = f"hf:{ref}"
    path = Path(ref).expanduser()
    cache = str(Path(cfg.root).expanduser()) if cfg.root else None
    try:
        with _hub_access(bool(cfg.download)):
            if _saved_to_disk(path):
                obj = datasets.load_from_disk(str(path))
            else:  # a local folder laid out as a dataset repository (`~` expanded), else a Hub id
                obj = datasets.load_dataset(str(path) if path.is_dir() else ref, cache_dir=cache)
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError, ...)
        reason = first_line(exc) or type(exc).__name__
        if path.is_dir():  # the folder is there: what is wrong is inside it
            raise DataError(f"data.name: {where} is a local folder but could not be read as a dataset ({reason}); "
                            "write it again with save_to_disk, or lay it out as a dataset repository") from None
        if cfg.download:
            raise DataError(f"data.name: {where} could not be loaded ({reason})") from None
        raise DataError(f"data.name: {where} could not be loaded offline ({reason}); it is neither a local dataset "
                        f"folder nor in the Hugging Face cache{f' at data.root={cache}' if cache else ''}: run once "
                        "with data.download=true on a machine with internet, or set data.name=hf:<folder> for a "
                        "dataset saved with save_to_disk or laid out as a dataset repository") from None
    if isinstance(obj, datasets.Dataset):
        obj = datasets.DatasetDict({"train": obj})
    if not isinstance(obj, datasets.DatasetDict) or not len(obj):
        raise DataError(f"data.name: {where} is not a dataset of splits (got {type(obj).__name__})")
    return obj


def _pick(ds, chosen: str | None, names: tuple[str, ...], feature_type, key: str, what: str, where: str) -> str:
    cols = list(ds.column_names)
    if chosen:
        if chosen not in cols:
            raise ConfigError(key, f"{where} has no column '{chosen}'; columns: {', '.join(cols)}")
        return chosen
    for n in names:
        if n in cols:
            return n
    for n, feature in ds.features.items():
        if isinstance(feature, feature_type):
            return n
    from datasets import ClassLabel, Value

    def could_hold(feature) -> bool:  # images are never one scalar; labels are always one integer
        scalar = isinstance(feature, (ClassLabel, Value))
        if what != "label":
            return not scalar
        return scalar and str(getattr(feature, "dtype", "int")).startswith(("int", "uint"))
    fits = [n for n, feature in ds.features.items() if could_hold(feature)]
    if not fits:
        raise ConfigError(key, f"{where} has no column that could hold {what}s (columns: {', '.join(cols)})")
    raise ConfigError(key, f"{where} has no {what} column named {' / '.join(names)}; set {key} to one of: "
                           f"{', '.join(fits)}")


def _to_tensor(value, channels: int, where: str = "") -> torch.Tensor:
    """One image (PIL image or nested array, HWC or HW) as a float (C, H, W) tensor in [0, 1]."""
    from PIL import Image

    if isinstance(value, Image.Image):
        arr = pil_pixels(value, channels, where, "data.name")
    else:
        raw = np.asarray(value)
        scale = 65535.0 if raw.dtype in (np.uint16, np.dtype(">u2")) else 255.0
        arr = raw.astype(np.float32) / (scale if np.issubdtype(raw.dtype, np.integer) else 1.0)
    t = torch.as_tensor(arr)
    if t.ndim == 2:
        t = t[None]
    elif t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3):
        t = t[..., :3].permute(2, 0, 1)
    if t.shape[0] != channels:
        t = t.mean(0, keepdim=True) if channels == 1 else t[:1].expand(3, -1, -1)
    return t.contiguous()


def _image_column(ds, key: str, where: str) -> None:
    """The image column holds images (datasets.Image, or arrays of 2 or 3 dimensions), not, say, paths."""
    from datasets import Image

    if isinstance(ds.features[key], Image):
        return
    first = ds[0][key]
    arr = None if isinstance(first, (str, bytes, dict)) else np.asarray(first)
    if arr is None or arr.ndim not in (2, 3) or not np.issubdtype(arr.dtype, np.number):
        feature = ds.features[key]
        kind = getattr(feature, "dtype", None) or type(feature).__name__  # Value('string') -> string
        what = repr(first)[:60] if isinstance(first, (str, bytes)) or np.isscalar(first) else type(first).__name__
        raise ConfigError("data.image_key", f"{where}'s column '{key}' does not hold images: it holds {kind} values "
                                            f"such as {what}; name a column of images (datasets.Image, or arrays "
                                            "of pixels)")


def _mode_channels(mode: str) -> int:
    return 1 if mode in GREY_MODES else 3


def _array_channels(value) -> int:
    arr = np.asarray(value)
    return 1 if arr.ndim == 2 or 1 in (arr.shape[0], arr.shape[-1]) else 3


def _native_channels(images, key: str, rows) -> int:
    """3 when any of the rows holds a colour image, else 1 (L, LA, 16-bit and float modes are grey).

    Images (datasets.Image) are opened undecoded: PIL reads the mode from the file's header."""
    import io

    from datasets import Image
    from PIL import Image as PILImage

    if not isinstance(images.features[key], Image):
        return max(_array_channels(images[int(i)][key]) for i in rows)
    raw = images.cast_column(key, Image(decode=False))
    for i in rows:
        cell = raw[int(i)][key]
        try:
            src = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell.get("path")
            with PILImage.open(src) as img:
                mode = img.mode
        except (OSError, ValueError, TypeError):  # a path inside an archive, say: let datasets decode it
            mode = images[int(i)][key].mode
        if _mode_channels(mode) == 3:
            return 3
    return 1


def _labels(values: list, classes: list | None, where: str = "") -> tuple[np.ndarray, list]:
    if classes is None:
        classes = sorted(set(values))
    lookup = {v: i for i, v in enumerate(classes)}
    unknown = next((v for v in values if v not in lookup), None)
    if unknown is not None:
        raise DataError(f"data.label_key: {where} has the label {unknown!r}, which is not one of the training split's "
                        f"{len(classes)} classes")
    return np.asarray([lookup[v] for v in values], dtype=np.int64), classes


def load_hf(cfg, seed: int):
    from datasets import ClassLabel, Image

    ref = cfg.name[len(PREFIX):].strip()
    if not ref:
        raise ConfigError("data.name", "hf: needs a dataset, e.g. data.name=hf:uoft-cs/cifar10 or hf:/path/to/folder")
    where = f"hf:{ref}"
    dd = open_dataset(ref, cfg)
    train_name = "train" if "train" in dd else next(iter(dd))
    train = dd[train_name]
    if len(train) == 0:
        raise DataError(f"data.name: {where} has an empty '{train_name}' split")
    image_key = _pick(train, cfg.image_key, IMAGE_KEYS, Image, "data.image_key", "image", where)
    label_key = _pick(train, cfg.label_key, LABEL_KEYS, ClassLabel, "data.label_key", "label", where)
    test = dd["test"] if "test" in dd and train_name != "test" else None
    test_labels = list(test[label_key]) if test is not None and label_key in test.column_names else None
    if test_labels is not None and set(test_labels) <= {-1, None}:
        # a test split without labels (ClassLabel's -1, as many benchmarks ship it): hold out train's
        test, test_labels = None, None
    feature = train.features[label_key]
    if isinstance(feature, ClassLabel):
        classes = list(range(feature.num_classes))
    else:
        values = set(train[label_key]) | set(test_labels or ())
        values.discard(None)
        if all(isinstance(v, (int, np.integer)) and v >= 0 for v in values):
            classes = list(range(int(max(values)) + 1))
        else:
            classes = sorted(values, key=str)
    train_y, classes = _labels(list(train[label_key]), classes)
    _image_column(train, image_key, where)
    images = train.select_columns([image_key])
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(images), size=min(NORM_SAMPLES, len(images)), replace=False))
    channels = _native_channels(images, image_key, np.union1d([0], sample))

    def fetcher(ds, rows: np.ndarray, split: str):
        return lambda i: _to_tensor(ds[int(rows[i])][image_key], channels, f"{where}'s {split} row {int(rows[i])}")

    moments = np.zeros((channels, 2))
    for i in sample:
        x = _to_tensor(images[int(i)][image_key], channels, f"{where}'s {train_name} row {int(i)}").flatten(1).double()
        moments += torch.stack([x.mean(1), (x ** 2).mean(1)], 1).numpy()
    moments /= len(sample)
    mean = moments[:, 0]
    std = np.sqrt(np.maximum(moments[:, 1] - mean ** 2, 1e-12))
    spec = image_spec(cfg, channels, len(classes), tuple(mean), tuple(std))
    if test is None:
        tr, te = stratified_split(train_y, cfg.test_fraction, seed)
        return Splits(ImageData(fetcher(images, tr, train_name), train_y[tr], spec),
                      ImageData(fetcher(images, te, train_name), train_y[te], spec))
    for key in (image_key, label_key):
        if key not in test.column_names:
            raise DataError(f"data.name: {where}'s test split has no column '{key}'")
    test_y, _ = _labels(test_labels, classes, f"{where}'s test split")
    all_rows = np.arange(len(train))
    return Splits(ImageData(fetcher(images, all_rows, train_name), train_y, spec),
                  ImageData(fetcher(test.select_columns([image_key]), np.arange(len(test)), "test"), test_y, spec))
