"""Real loaders on tiny files in the real formats; the embedded datasets; partitions; missing roots
are clear errors."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from fedattack import config as fconfig
from fedattack.data import DATASETS, load_dataset, partition
from fedattack.data.datasets import PHOTO_CROP, PHOTOS, photo_crops
from fedattack.errors import ConfigError, DataError


def _cfg(*overrides):
    return fconfig.load(None, ["audit.attacks=[]", *overrides])


def test_lfw_subset_is_bundled_and_normalized():
    splits = load_dataset(_cfg().data, seed=0)
    assert len(splits.train) + len(splits.test) == 200
    x, y = splits.train.get([0, 1, 2])
    assert x.shape == (3, 1, 32, 32)
    px = splits.train.pixels(range(len(splits.train)))
    assert 0 <= px.min() and px.max() <= 1
    assert set(np.unique(splits.train.targets)) == {0, 1}
    assert abs(float(splits.train.spec.to_pixels(x).mean() - splits.train.pixels([0, 1, 2]).mean())) < 1e-5


def test_digits_is_bundled_with_scikit_learn():
    cfg = _cfg("data.name=digits").data
    splits = load_dataset(cfg, seed=0)
    assert len(splits.train) + len(splits.test) == 1797
    assert splits.train.spec.num_classes == 10 and splits.train.spec.shape == (1, 32, 32)
    assert set(np.unique(splits.test.targets)) == set(range(10))  # the split is stratified
    assert abs(len(splits.test) / 1797 - cfg.test_fraction) < 0.01
    native = load_dataset(_cfg("data.name=digits", "data.image_size=8").data, seed=0)
    px = native.train.pixels(range(len(native.train)))
    assert px.shape[1:] == (1, 8, 8) and 0 <= px.min() and px.max() == 1  # values 0-16, divided by 16
    assert (px * 16 - (px * 16).round()).abs().max() < 1e-5
    spec = native.train.spec
    assert abs(spec.mean[0] - float(px.mean())) < 0.01 and abs(spec.std[0] - float(px.std())) < 0.01
    again = DATASETS.get("digits")(cfg, 0)  # not the per-process cache: a second real load
    assert (again.train.targets == splits.train.targets).all()
    assert (again.train.pixels([0, 7]) == splits.train.pixels([0, 7])).all()
    other = DATASETS.get("digits")(cfg, 1)
    assert not (other.train.targets == splits.train.targets).all()


def test_photos_are_crops_of_scikit_image_photos():
    crops, labels = photo_crops()
    per_photo = len(crops) // len(PHOTOS)
    assert crops.shape == (len(PHOTOS) * per_photo, PHOTO_CROP, PHOTO_CROP, 3) and crops.dtype == np.uint8
    assert np.bincount(labels).tolist() == [per_photo] * len(PHOTOS)
    import skimage.data

    assert (crops[0] == skimage.data.astronaut()[:PHOTO_CROP, :PHOTO_CROP]).all()  # the grid starts at the corner
    chelsea = skimage.data.chelsea()
    last = crops[labels == PHOTOS.index("chelsea")][-1]
    assert (last == chelsea[-PHOTO_CROP:, -PHOTO_CROP:]).all()  # ... and ends at the opposite one
    assert len({c.tobytes() for c in crops}) == len(crops)
    again, _ = photo_crops()
    assert (again == crops).all()

    cfg = _cfg("data.name=photos", f"data.image_size={PHOTO_CROP}").data
    splits = load_dataset(cfg, seed=0)
    assert len(splits.train) + len(splits.test) == len(crops)
    assert splits.train.spec.shape == (3, PHOTO_CROP, PHOTO_CROP) and splits.train.spec.num_classes == len(PHOTOS)
    assert np.bincount(splits.test.targets).min() >= 1
    px = splits.train.pixels(range(len(splits.train)))
    mean = px.mean(dim=(0, 2, 3))
    every = torch.as_tensor(crops, dtype=torch.float64).mean(dim=(0, 1, 2)) / 255
    assert torch.allclose(torch.as_tensor(splits.train.spec.mean, dtype=torch.float64), every, atol=1e-6)
    assert (mean.double() - every).abs().max() < 0.05  # the training split's own mean is close
    x, _ = load_dataset(_cfg("data.name=photos").data, seed=0).train.get([0, 1])
    assert x.shape == (2, 3, 32, 32)


def _write_idx(root, folder, n_train=12, n_test=6, size=28):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, size, size) + imgs.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return imgs


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_family_from_idx_files(tmp_path, name, folder):
    _write_idx(tmp_path, folder)
    splits = load_dataset(_cfg(f"data.name={name}", f"data.root={tmp_path}").data, seed=0)
    assert len(splits.train) == 12 and len(splits.test) == 6
    assert splits.train.spec.num_classes == 10
    x, y = splits.train.get([0, 5])
    assert x.shape == (2, 1, 32, 32) and y.tolist() == [0, 5]
    labels = tmp_path / folder / "raw" / "train-labels-idx1-ubyte"  # labels of another, smaller set
    labels.write_bytes(struct.pack(">II", 2049, 5) + bytes(5))
    load_dataset.cache_clear()
    with pytest.raises(DataError, match=r"^data.root: .*training split .* holds 12 images but 5 labels"):
        load_dataset(_cfg(f"data.name={name}", f"data.root={tmp_path}").data, seed=0)


def test_calibration_data_on_disk_reads_data_root_or_its_own(tmp_path):
    """The server's own dataset for calibration: torchvision's datasets share data.root's parent
    folder; audit.calibration_root names another folder."""
    from fedattack.experiment import build
    from fedattack.server.audit import server_data

    _write_idx(tmp_path / "a", "MNIST", n_train=24)
    _write_idx(tmp_path / "a", "FashionMNIST", n_test=10)
    _write_idx(tmp_path / "b", "FashionMNIST", n_test=7)
    base = ["data.name=mnist", f"data.root={tmp_path / 'a'}", "fl.num_clients=4", "partition.name=iid",
            "audit.calibrate=true", "audit.calibration_data=fashion-mnist", "audit.calibration_samples=8"]
    images, labels = server_data(build(_cfg(*base)))
    assert images.shape == (8, 1, 32, 32) and labels.max() < 10
    images, _ = server_data(build(_cfg(*base[:-1], f"audit.calibration_root={tmp_path / 'b'}")))
    assert len(images) == 7  # b's 7 test images, not a's 10


def test_cifar10_from_pickled_batches(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tv_cifar

    # torchvision checks the real archive's MD5 sums; tiny test files cannot match them
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    splits = load_dataset(_cfg("data.name=cifar10", f"data.root={tmp_path}").data, seed=0)
    assert len(splits.train) == 20 and len(splits.test) == 4
    x, _ = splits.train.get([0])
    assert x.shape == (1, 3, 32, 32)


def test_imagefolder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    splits = load_dataset(_cfg("data.name=imagefolder", f"data.root={tmp_path}", "data.image_size=16").data, seed=0)
    assert len(splits.train) + len(splits.test) == 10
    assert splits.train.spec.num_classes == 2
    x, _ = splits.train.get([0])
    assert x.shape == (1, 3, 16, 16)
    (tmp_path / "dogs" / "9.png").write_text("not an image")  # found when the image is first used
    splits = load_dataset(_cfg("data.name=imagefolder", f"data.root={tmp_path}", "data.test_fraction=0.5").data,
                          seed=1)
    with pytest.raises(DataError, match=r"^data.root: .*9.png is not an image PIL can read"):
        for i in range(len(splits.train)):
            splits.train.get([i])
        for i in range(len(splits.test)):
            splits.test.get([i])
    with pytest.raises(DataError, match=r"^data.root: no images found under .*a.txt"):
        (tmp_path / "a.txt").write_text("")
        load_dataset(_cfg("data.name=imagefolder", f"data.root={tmp_path / 'a.txt'}").data, seed=0)


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="data.root"):
        load_dataset(_cfg("data.name=mnist", f"data.root={tmp_path / 'nowhere'}").data, seed=0)
    with pytest.raises(DataError, match="MNIST"):
        load_dataset(_cfg("data.name=mnist", f"data.root={tmp_path}").data, seed=0)
    with pytest.raises(ConfigError, match="data.root"):
        load_dataset(_cfg("data.name=cifar10").data, seed=0)


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
def test_partitions_are_disjoint_and_reproducible(name):
    targets = np.repeat(np.arange(5), 40)
    cfg = _cfg(f"partition.name={name}", "partition.alpha=0.3").partition
    parts = partition(targets, num_clients=8, cfg=cfg, seed=1)
    allidx = np.concatenate(parts)
    assert len(parts) == 8 and len(allidx) == len(set(allidx.tolist()))
    # shards are floor(200 / 16) = 12 samples: flwr-datasets' ShardPartitioner leaves the remainder out
    assert len(allidx) == (8 * 2 * 12 if name == "shards" else len(targets))
    assert all(len(p) >= 2 for p in parts)
    again = partition(targets, num_clients=8, cfg=cfg, seed=1)
    assert all((a == b).all() for a, b in zip(parts, again))


def test_dirichlet_small_alpha_is_skewed():
    targets = np.repeat(np.arange(4), 100)
    skewed = partition(targets, num_clients=4, cfg=_cfg("partition.alpha=0.05").partition, seed=0)
    even = partition(targets, num_clients=4, cfg=_cfg("partition.alpha=100").partition, seed=0)

    def mean_max_share(parts):
        return np.mean([np.bincount(targets[p], minlength=4).max() / len(p) for p in parts])

    assert mean_max_share(skewed) > 0.7 > mean_max_share(even)
