"""LPIPS: the formula (against the lpips package where it is installed), where the weights are
looked up, and what the run says when they are missing. Nothing here downloads anything."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedattack import config as fconfig
from fedattack.metrics import score
from fedattack.metrics import lpips as lp
from fedattack.report import store as store_module
from fedattack.threat import DataSpec, Reconstruction, Truth


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A folder with a random AlexNet backbone and random positive linear layers, saved under
    the file names LPIPS's real weights have."""
    from torchvision.models import alexnet

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("lpips")
    torch.save(alexnet(weights=None).state_dict(), folder / lp.BACKBONE_FILE)
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(lp.CHANNELS)},
               folder / lp.LINEAR_FILE)
    return folder


def test_lpips_is_zero_on_identical_images_and_grows_with_distortion(weights):
    fn = lp.lpips_fn(str(weights))
    assert fn is not None
    rng = np.random.default_rng(0)
    truth = rng.random((3, 1, 32, 32))
    d = [fn(np.clip(truth + s * rng.standard_normal(truth.shape), 0, 1), truth) for s in (0.0, 0.05, 0.3)]
    assert np.allclose(d[0], 0, atol=1e-6) and np.all(d[1] > 1e-4) and np.all(d[2] > 2 * d[1])
    small = rng.random((2, 1, 8, 8))  # AlexNet needs 32 px: smaller images are upsampled first
    assert fn(small, small[::-1]).shape == (2,) and np.all(fn(small, small[::-1]) > 0)
    rgb = rng.random((2, 3, 32, 32))
    assert fn(rgb, rgb).max() < 1e-6


def test_the_score_carries_lpips_per_image_and_averaged(weights):
    spec = DataSpec(shape=(1, 32, 32), num_classes=2, mean=(0.5,), std=(0.25,))
    px = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    truth = Truth(images=spec.normalize(px), labels=torch.tensor([0, 1]), indices=(4, 9))
    s = score(Reconstruction(images=spec.normalize(px.flip(0))), truth, spec, lpips=lp.lpips_fn(str(weights)))
    assert s.per_image.lpips.shape == (2,) and s.lpips == pytest.approx(float(s.per_image.lpips.mean()))


def test_missing_weights_say_which_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(lp, "_hub_checkpoints", lambda: tmp_path / "hub")
    monkeypatch.setattr(lp, "_lpips_package_linear", lambda: None)
    found, why = lp.locate(str(tmp_path))
    assert found is None and lp.lpips_fn(str(tmp_path)) is None
    assert lp.BACKBONE_FILE in why and "audit.lpips_download=true" in why and "pip install lpips" in why
    # consent to download, without a network: the run records why LPIPS is missing
    monkeypatch.setattr(store_module, "download_backbone", lambda: "downloading AlexNet's weights failed (URLError)")
    cfg = fconfig.load(None, ["audit.lpips_download=true"])
    assert store_module.lpips_status(cfg).startswith("downloading AlexNet's weights failed")
    assert store_module.lpips_status(fconfig.load(None, [])) == why.replace(f"{tmp_path} or ", "").replace(
        f"{tmp_path} and ", "")


def test_the_formula_matches_the_lpips_package(weights):
    lpips = pytest.importorskip("lpips")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)  # published linear layers
    backbone = torch.load(weights / lp.BACKBONE_FILE)
    for k, v in ref.net.state_dict().items():  # its random backbone into torchvision's layout
        backbone[f"features.{k.split('.', 1)[1]}"] = v
    linear = {k: v for k, v in ref.state_dict().items() if k.startswith("lin")}
    mine = lp.LPIPS(backbone, linear)
    a, b = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    assert torch.allclose(mine(a, b), ref(a, b, normalize=True).flatten(), atol=1e-6)
