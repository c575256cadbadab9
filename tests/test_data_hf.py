"""`data.name=hf:<dataset>`: tiny datasets written in Hugging Face's real formats, loaded offline; a
dataset that is neither local nor cached is one line naming data.name, exit code 2, nothing written."""

from __future__ import annotations

import numpy as np
import pytest

from fedattack import config as fconfig
from fedattack.cli import main
from fedattack.data import load_dataset
from fedattack.errors import ConfigError, DataError

datasets = pytest.importorskip("datasets")


def _cfg(*overrides):
    return fconfig.load(None, ["audit.attacks=[]", *overrides]).data


def _images(rng, n, shape):
    from PIL import Image

    return [Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)) for _ in range(n)]


def _tiny(image_col="img", label_col="label", shape=(20, 24, 3), n_train=12, n_test=6):
    rng = np.random.default_rng(0)
    feats = datasets.Features({image_col: datasets.Image(), label_col: datasets.ClassLabel(names=["a", "b", "c"])})
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict({image_col: _images(rng, n, shape), label_col: [i % 3 for i in range(n)]},
                                          features=feats)
        for split, n in (("train", n_train), ("test", n_test))})


def test_saved_to_disk(tmp_path):
    dd = _tiny()
    dd.save_to_disk(str(tmp_path / "tiny"))
    splits = load_dataset(_cfg(f"data.name=hf:{tmp_path / 'tiny'}", "data.image_size=16"), seed=0)
    assert len(splits.train) == 12 and len(splits.test) == 6
    assert splits.train.spec.num_classes == 3 and splits.train.spec.shape == (3, 16, 16)
    assert splits.train.targets.tolist() == [i % 3 for i in range(12)]
    native = load_dataset(_cfg(f"data.name=hf:{tmp_path / 'tiny'}", "data.image_size=20"), seed=0)
    px = native.test.fetch(4)  # the dataset's own pixels, (C, H, W) in [0, 1]
    assert px.shape == (3, 20, 24)
    assert np.allclose(px.permute(1, 2, 0).numpy() * 255, np.asarray(dd["test"][4]["img"]), atol=1e-3)
    x, y = splits.test.get([0, 1])
    assert x.shape == (2, 3, 16, 16) and y.tolist() == [0, 1]


def test_repository_folder_with_other_columns_and_no_test_split(tmp_path):
    """A folder laid out as a dataset repository (parquet shards under data/), grey images in `image`,
    labels in `fine_label` beside a `coarse_label`: detected, and a stratified test split is cut."""
    rng = np.random.default_rng(1)
    feats = datasets.Features({"image": datasets.Image(), "coarse_label": datasets.Value("int64"),
                               "fine_label": datasets.ClassLabel(names=[f"c{i}" for i in range(4)])})
    ds = datasets.Dataset.from_dict({"image": _images(rng, 20, (10, 10)), "coarse_label": [0] * 20,
                                     "fine_label": [i % 4 for i in range(20)]}, features=feats)
    (tmp_path / "repo" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"))
    splits = load_dataset(_cfg(f"data.name=hf:{tmp_path / 'repo'}", "data.test_fraction=0.25"), seed=3)
    assert len(splits.train) == 16 and len(splits.test) == 4
    assert splits.train.spec.shape == (1, 32, 32) and splits.train.spec.num_classes == 4
    assert sorted(splits.test.targets.tolist()) == [0, 1, 2, 3]
    coarse = load_dataset(_cfg(f"data.name=hf:{tmp_path / 'repo'}", "data.label_key=coarse_label",
                               "data.channels=3"), seed=3)
    assert coarse.train.spec.num_classes == 1 and coarse.train.get([0])[0].shape == (1, 3, 32, 32)


def test_columns_named_by_config(tmp_path):
    _tiny(image_col="photo", label_col="kind").save_to_disk(str(tmp_path / "tiny"))
    name = f"data.name=hf:{tmp_path / 'tiny'}"
    splits = load_dataset(_cfg(name), seed=0)  # detected by feature type
    assert splits.train.spec.num_classes == 3
    splits = load_dataset(_cfg(name, "data.image_key=photo", "data.label_key=kind"), seed=0)
    assert len(splits.train) == 12
    with pytest.raises(ConfigError, match="data.image_key") as err:
        load_dataset(_cfg(name, "data.image_key=pixels"), seed=0)
    assert "photo" in str(err.value)


def test_cached_hub_dataset_offline(tmp_path):
    """A Hub dataset in the Hugging Face cache (written by `datasets` itself, stored under the name a Hub
    download is stored under) loads with the Hub out of reach."""
    rng = np.random.default_rng(2)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    ds = datasets.Dataset.from_dict({"image": _images(rng, 10, (8, 8)), "label": [i % 2 for i in range(10)]},
                                    features=feats)
    (tmp_path / "tiny" / "data").mkdir(parents=True)
    ds.to_parquet(str(tmp_path / "tiny" / "data" / "train-00000-of-00001.parquet"))
    cache = tmp_path / "cache"
    datasets.load_dataset(str(tmp_path / "tiny"), cache_dir=str(cache))
    (cache / "tiny").rename(cache / "someone___tiny")  # where `datasets` keeps the Hub dataset someone/tiny
    splits = load_dataset(_cfg("data.name=hf:someone/tiny", f"data.root={cache}"), seed=0)
    assert len(splits.train) + len(splits.test) == 10 and splits.train.spec.shape == (1, 32, 32)


def test_absent_dataset_is_one_line(tmp_path):
    with pytest.raises(DataError, match="data.name") as err:
        load_dataset(_cfg("data.name=hf:nobody/not-cached-anywhere", f"data.root={tmp_path}"), seed=0)
    msg = str(err.value)
    assert "\n" not in msg and "offline" in msg and "data.download=true" in msg
    with pytest.raises(DataError, match="data.name"):
        load_dataset(_cfg(f"data.name=hf:{tmp_path / 'nowhere'}"), seed=0)


def test_cli_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "data.name=hf:nobody/not-cached-anywhere", f"data.root={tmp_path / 'cache'}",
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and err.startswith("fedattack: error: data.name: hf:nobody/"), err
    assert not out.exists()


def test_an_unlabelled_test_split_is_replaced_by_a_held_out_share_of_train(tmp_path):
    """Benchmarks often ship their test split without labels (ClassLabel's -1): train's held-out
    share stands in; a test label outside train's classes is one line naming data.label_key."""
    dd = _tiny(n_train=12, n_test=4)
    dd["test"] = dd["test"].cast_column("label", datasets.Value("int64")).map(lambda r: {"label": -1})
    dd.save_to_disk(str(tmp_path / "nolabels"))
    splits = load_dataset(_cfg(f"data.name=hf:{tmp_path / 'nolabels'}", "data.test_fraction=0.25"), seed=0)
    assert len(splits.train) == 9 and len(splits.test) == 3 and splits.train.spec.num_classes == 3
    odd = _tiny(n_train=12, n_test=4)  # some test images labelled, one not
    odd["test"] = odd["test"].cast_column("label", datasets.Value("int64")).map(
        lambda r, i: {"label": -1 if i == 2 else r["label"]}, with_indices=True)
    odd.save_to_disk(str(tmp_path / "odd"))
    with pytest.raises(DataError, match=r"^data.label_key: .*'s test split has the label -1, which is not one of"):
        load_dataset(_cfg(f"data.name=hf:{tmp_path / 'odd'}"), seed=0)


def test_a_home_relative_repository_folder_and_a_bare_prefix(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "repo" / "data").mkdir(parents=True)
    _tiny()["train"].to_parquet(str(tmp_path / "repo" / "data" / "train-00000-of-00001.parquet"))
    assert len(load_dataset(_cfg("data.name=hf:~/repo"), seed=0).test) > 0
    with pytest.raises(ConfigError, match=r"^data.name: hf: needs a dataset"):
        load_dataset(_cfg("data.name=hf:"), seed=0)


def test_a_column_of_paths_is_not_an_image_column(tmp_path):
    ds = datasets.Dataset.from_dict({"image": [f"img/{i}.png" for i in range(6)], "label": [i % 2 for i in range(6)]})
    ds.save_to_disk(str(tmp_path / "paths"))
    with pytest.raises(ConfigError, match=r"^data.image_key: .*'s column 'image' does not hold images: it holds "
                                          r"string values such as 'img/0.png'") as err:
        load_dataset(_cfg(f"data.name=hf:{tmp_path / 'paths'}"), seed=0)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"column 'label' does not hold images: it holds int64 values such as 0;"):
        load_dataset(_cfg(f"data.name=hf:{tmp_path / 'paths'}", "data.image_key=label"), seed=0)
    # no column named as images are, and none that could hold one: the columns, not a suggestion
    ds.rename_column("image", "path").save_to_disk(str(tmp_path / "named"))
    with pytest.raises(ConfigError, match=r"^data.image_key: .* has no column that could hold images "
                                          r"\(columns: path, label\)$"):
        load_dataset(_cfg(f"data.name=hf:{tmp_path / 'named'}"), seed=0)


def test_a_damaged_local_folder_is_not_called_absent(tmp_path):
    _tiny().save_to_disk(str(tmp_path / "tiny"))
    for arrow in (tmp_path / "tiny").rglob("*.arrow"):
        arrow.write_bytes(arrow.read_bytes()[:100])
    with pytest.raises(DataError, match=r"^data.name: hf:.*tiny is a local folder but could not be read as a "
                                        r"dataset \(") as err:
        load_dataset(_cfg(f"data.name=hf:{tmp_path / 'tiny'}"), seed=0)
    assert "\n" not in str(err.value) and "neither a local" not in str(err.value)


def test_channels_come_from_every_sampled_image_not_the_first(tmp_path):
    """A grey first image among colour ones is a colour dataset; grey with alpha (LA) is grey."""
    from PIL import Image

    rng = np.random.default_rng(4)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    grey = [Image.fromarray(rng.integers(0, 256, size=(8, 8), dtype=np.uint8))]
    mixed = datasets.Dataset.from_dict({"image": grey + _images(rng, 9, (8, 8, 3)),
                                        "label": [i % 2 for i in range(10)]}, features=feats)
    mixed.save_to_disk(str(tmp_path / "mixed"))
    splits = load_dataset(_cfg(f"data.name=hf:{tmp_path / 'mixed'}", "data.image_size=8"), seed=0)
    assert splits.train.spec.shape == (3, 8, 8)
    la = Image.fromarray(rng.integers(0, 256, size=(8, 8, 2), dtype=np.uint8), mode="LA")
    ds = datasets.Dataset.from_dict({"image": [la] * 10, "label": [i % 2 for i in range(10)]}, features=feats)
    ds.save_to_disk(str(tmp_path / "la"))
    splits = load_dataset(_cfg(f"data.name=hf:{tmp_path / 'la'}", "data.image_size=8"), seed=0)
    assert splits.train.spec.shape == (1, 8, 8)
    assert np.allclose(splits.train.fetch(0)[0].numpy() * 255, np.asarray(la)[..., 0], atol=1e-3)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    ramp = (np.arange(8 * 8).reshape(8, 8) * 1000).astype(np.uint16)
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(ramp) for _ in range(6)], "label": [0, 1] * 3},
                                    features=feats)
    ds.save_to_disk(str(tmp_path / "deep"))
    splits = load_dataset(_cfg(f"data.name=hf:{tmp_path / 'deep'}", "data.image_size=8"), seed=0)
    assert splits.train.spec.shape == (1, 8, 8)
    assert np.allclose(splits.train.fetch(0)[0].numpy(), ramp / 65535, atol=1e-6)
