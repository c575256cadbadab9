"""Real loaders on tiny files in the real formats; the embedded datasets; partitions; missing roots
are clear errors."""

from __future__ import annotations

import pickle
import re
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
    (tmp_path / "dogs" / "9.png").write_text("not an image")  # found when the folder is loaded
    with pytest.raises(DataError, match=r"^data.root: .*9.png is not an image PIL can read"):
        load_dataset(_cfg("data.name=imagefolder", f"data.root={tmp_path}", "data.test_fraction=0.5").data, seed=1)
    (tmp_path / "dogs" / "9.png").unlink()
    with pytest.raises(DataError, match=r"^data.root: no images found under .*a.txt"):
        (tmp_path / "a.txt").write_text("")
        load_dataset(_cfg("data.name=imagefolder", f"data.root={tmp_path / 'a.txt'}").data, seed=0)


def test_an_unreadable_image_is_found_when_the_folder_is_loaded(tmp_path):
    """A PNG cut short (PIL's verify reads its chunks' checksums) or a text file named .png is one line
    naming data.root when the folder is loaded, before any client trains on it."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    cut = tmp_path / "b" / "2.png"
    cut.write_bytes(cut.read_bytes()[:200])
    cfg = _cfg("data.name=imagefolder", f"data.root={tmp_path}").data
    with pytest.raises(DataError, match=r"^data.root: .*b/2.png is not an image PIL can read \(OSError\)") as err:
        load_dataset(cfg, seed=0)
    assert "\n" not in str(err.value)
    cut.write_text("plain text")
    load_dataset.cache_clear()
    with pytest.raises(DataError, match=r"^data.root: .*b/2.png is not an image PIL can read \(UnidentifiedImage"):
        load_dataset(cfg, seed=0)
    cut.unlink()
    jpeg = tmp_path / "a" / "3.jpg"  # verify reads a JPEG's header only: the cut is found by decoding it
    Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(jpeg, quality=90)
    load_dataset.cache_clear()
    assert len(load_dataset(cfg, seed=0).train) > 0
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    load_dataset.cache_clear()
    with pytest.raises(DataError, match=r"^data.root: .*a/3.jpg is not an image PIL can read \(OSError\)"):
        load_dataset(cfg, seed=0)


def test_an_image_folder_of_one_class_or_with_an_empty_class_is_one_line(tmp_path):
    from PIL import Image

    (tmp_path / "cats").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "cats" / f"{i}.png")
    cfg = _cfg("data.name=imagefolder", f"data.root={tmp_path}").data
    load_dataset.cache_clear()
    with pytest.raises(DataError, match=r"^data.root: .* holds one class folder \(cats\); a classifier needs at "
                                        r"least 2 classes"):  # every update would be zero
        load_dataset(cfg, seed=0)
    (tmp_path / "dogs").mkdir()
    load_dataset.cache_clear()
    with pytest.raises(DataError, match=r"^data.root: a class folder holds no images \(.*dogs"):
        load_dataset(cfg, seed=0)


def test_images_of_more_than_8_bits_are_scaled_not_clipped(tmp_path):
    """16-bit greyscale (PNG's I;16, TIFF's I;16B) is divided by 65535; 32-bit integers (I) in 0..65535
    likewise and floats (F) in 0..1 as they are; other 32-bit values are one line naming the file."""
    from PIL import Image

    ramp = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65280
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(ramp).save(tmp_path / "a" / "0.png")  # opened as I;16
    Image.fromarray(ramp.astype(">u2")).save(tmp_path / "a" / "1.tif")  # I;16B
    Image.fromarray(ramp.astype(np.int32)).save(tmp_path / "b" / "0.tif")  # I
    Image.fromarray(ramp.astype(np.float32) / 65535).save(tmp_path / "b" / "1.tif")  # F
    assert [Image.open(p).mode for p in sorted(tmp_path.glob("*/*"))] == ["I;16", "I;16B", "I", "F"]
    splits = load_dataset(_cfg("data.name=imagefolder", f"data.root={tmp_path}", "data.image_size=16",
                               "data.channels=1", "data.test_fraction=0.5").data, seed=0)
    for data in (splits.train, splits.test):
        for i in range(len(data)):
            px = data.fetch(i)
            assert px.shape == (1, 16, 16)
            assert np.allclose(px[0].numpy(), ramp / 65535, atol=1e-6), data.targets[i]
    rgb = load_dataset(_cfg("data.name=imagefolder", f"data.root={tmp_path}", "data.image_size=16").data, seed=0)
    assert np.allclose(rgb.train.fetch(0).numpy(), np.broadcast_to(ramp / 65535, (3, 16, 16)), atol=1e-6)
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(tmp_path / "b" / "2.tif")
    with pytest.raises(DataError, match=r"^data.root: .*b/2.tif is a 32-bit integer image \(mode I\) with values "
                                        r"70000..70000; only values in 0..65535"):
        load_dataset(_cfg("data.name=imagefolder", f"data.root={tmp_path}").data, seed=0)
    (tmp_path / "b" / "2.tif").unlink()
    Image.fromarray(np.full((4, 4), 3.5, dtype=np.float32)).save(tmp_path / "b" / "2.tif")
    with pytest.raises(DataError, match=r"^data.root: .*b/2.tif is a float image \(mode F\) with values 3.5..3.5"):
        load_dataset(_cfg("data.name=imagefolder", f"data.root={tmp_path}").data, seed=1)


@pytest.mark.parametrize("damage, why", [
    (lambda raw: raw / "train-images-idx3-ubyte", None),
    (lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x09\x01" + bytes(8)),
     r"train-labels-idx1-ubyte starts with 00000901, not an idx file's magic number 00000801"),
    (lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(b""), r"t10k-images-idx3-ubyte is empty"),
    (lambda raw: (raw / "train-images-idx3-ubyte").write_text("just some text\n"),
     r"train-images-idx3-ubyte starts with 6a757374, not an idx file's magic number 00000803"),
    (lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes()[:1000]),
     r"t10k-images-idx3-ubyte is 1000 bytes but its header promises 6 x 28 x 28 values \(4720 bytes\)"),
], ids=["missing", "wrong-magic", "empty", "text", "truncated"])
def test_corrupt_idx_files_are_one_line(tmp_path, damage, why):
    """Files present but not readable as idx files are told apart from files that are not there."""
    _write_idx(tmp_path, "MNIST")
    raw = tmp_path / "MNIST" / "raw"
    path = damage(raw)
    if why is None:  # a missing file: not found
        path.unlink()
        why = r"mnist not found under"
    else:
        why = rf"{raw} is not readable as MNIST idx files: {why}"
    with pytest.raises(DataError, match=r"^data.root: " + why) as err:
        load_dataset(_cfg("data.name=mnist", f"data.root={tmp_path}").data, seed=0)
    assert "\n" not in str(err.value)


def test_a_label_outside_the_classes_is_refused_when_loaded(tmp_path, capsys):
    from fedattack.cli import main

    _write_idx(tmp_path, "FashionMNIST")
    path = tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels = bytearray(path.read_bytes())
    labels[8 + 3] = 200
    path.write_bytes(bytes(labels))
    with pytest.raises(DataError, match=r"^data.root: fashion-mnist's test split: sample 3 has the label 200, "
                                        r"outside the dataset's classes 0..9$"):
        load_dataset(_cfg("data.name=fashion-mnist", f"data.root={tmp_path}").data, seed=0)
    out = tmp_path / "run"
    code = main(["run", "data.name=fashion-mnist", f"data.root={tmp_path}", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "sample 3 has the label 200" in err, err
    assert not out.exists()


@pytest.mark.parametrize("name, says", [
    ("flattened", r"images of shape \(6, 48\); a dataset gives \(N, H, W\) or \(N, H, W, C\) images with C 1 or 3"),
    ("four_channels", r"images of shape \(6, 8, 8, 4\)"),
    ("more_labels", r"6 images and 8 labels; a dataset gives one label per image"),
    ("bytes_as_floats", r"pixel values 0\.\d+\.\.25\d\.\d+; a dataset gives floats in \[0, 1\] or uint8"),
    ("fractional_labels", r"labels of type float64 with non-integer values"),
    ("fetch_too_short", r"tests\.plugins\.datasets:fetch_too_short's training split: fetching sample 7 of 8 \(one per "
                        r"label\) raised IndexError"),
])
def test_a_dataset_of_ones_own_that_breaks_the_image_contract_is_one_line(tmp_path, capsys, name, says):
    from fedattack.cli import main

    out = tmp_path / "run"
    code = main(["attack", f"data.name=tests.plugins.datasets:{name}", "audit.attacks=[idlg]", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and re.search(rf"^fedattack: error: data\.name: .*{says}", err), err
    assert not out.exists()


def test_cifar_files_that_fail_the_checksums_are_not_called_missing(tmp_path):
    """A correctly laid out but unofficial cifar-10-batches-py (a subset, say) fails torchvision's MD5
    check: the message says so, not "not found"."""
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 1]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    with pytest.raises(DataError, match=r"^data.root: .*cifar-10-batches-py holds cifar10's files, but they do not "
                                        r"match the official release's checksums \(torchvision checks them\)"):
        load_dataset(_cfg("data.name=cifar10", f"data.root={tmp_path}").data, seed=0)
    (base / "test_batch").unlink()
    with pytest.raises(DataError, match=r"^data.root: cifar10 not found under"):
        load_dataset(_cfg("data.name=cifar10", f"data.root={tmp_path}").data, seed=0)


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


def test_a_failed_download_is_one_line_and_leaves_no_folders(tmp_path, monkeypatch):
    # torchvision tries each mirror and raises a message listing them all (one line per mirror)
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    root = tmp_path / "new" / "data"
    load_dataset.cache_clear()
    with pytest.raises(DataError) as err:
        load_dataset(_cfg("data.name=mnist", f"data.root={root}", "data.download=true").data, seed=0)
    message = str(err.value)
    assert message.startswith(f"data.download: downloading mnist to {root} failed (") and "\n" not in message
    assert "without internet, put the files there yourself" in message
    assert not (tmp_path / "new").exists()  # the folders the download made stayed empty and are gone
    load_dataset.cache_clear()  # CIFAR downloads from one address: urllib's own error, as the same one line
    with pytest.raises(DataError, match=rf"^data.download: downloading cifar10 to {re.escape(str(root))} failed "):
        load_dataset(_cfg("data.name=cifar10", f"data.root={root}", "data.download=true").data, seed=0)
    assert not (tmp_path / "new").exists()
