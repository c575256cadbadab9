"""Scoring: matching, PSNR/SSIM, label accuracy, and what counts as a recovered image."""

from __future__ import annotations

import numpy as np
import torch

from fedattack.metrics import label_accuracy, match_and_score, score
from fedattack.metrics.score import flat_baseline
from fedattack.threat import DataSpec, Reconstruction, Truth


def _faces(n=4):
    from skimage.data import lfw_subset

    x = torch.as_tensor(lfw_subset()[:n], dtype=torch.float32)[:, None]
    return torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True).numpy()


def test_matching_recovers_a_permutation_exactly():
    t = _faces(4)
    s = match_and_score(t[[2, 0, 3, 1]], t)
    assert s.match.tolist() == [1, 3, 0, 2]
    assert np.all(s.psnr == 100.0) and np.allclose(s.ssim, 1.0)


def test_unmatched_truth_scores_as_a_grey_guess_and_counts_as_not_leaked():
    t = _faces(3)
    s = match_and_score(t[:1], t)
    grey = match_and_score(np.full_like(t[1:], 0.5), t[1:])
    assert (s.match >= 0).sum() == 1 and s.psnr[0] == 100.0
    assert np.allclose(s.psnr[1:], grey.psnr) and np.allclose(s.ssim[1:], grey.ssim)
    baseline_psnr, baseline_ssim = flat_baseline(t[1:])
    assert np.all(s.psnr[1:] <= baseline_psnr + 1e-9) and np.all(s.ssim[1:] <= baseline_ssim + 1e-9)


def test_one_exact_image_of_eight_is_a_leak():
    """An attack that returns one exact image of a client's eight (an analytic attack on a batch)
    leaked that image: the seven it said nothing about count as blank guesses, not as 0 dB (which
    pulled the mean PSNR under the blank-guess baseline and hid the leak)."""
    spec = DataSpec(shape=(1, 32, 32), num_classes=2, mean=(0.5,), std=(0.25,))
    px = torch.as_tensor(_faces(8))
    truth = Truth(images=spec.normalize(px), labels=torch.ones(8, dtype=torch.long))
    s = score(Reconstruction(images=spec.normalize(px[2:3])), truth, spec)
    assert s.recovered == 1 and s.margin > 0.5


def test_label_accuracy_is_order_free_with_multiplicity():
    assert label_accuracy([1, 0, 1], [1, 1, 0]) == 1.0
    assert label_accuracy([1, 1, 1], [1, 0, 0]) == 1 / 3
    assert np.isnan(label_accuracy([], []))


def test_a_flat_guess_is_never_a_recovery_but_the_truth_is():
    spec = DataSpec(shape=(1, 32, 32), num_classes=2, mean=(0.5,), std=(0.25,))
    px = torch.as_tensor(_faces(4))
    truth = Truth(images=spec.normalize(px), labels=torch.tensor([1, 1, 1, 1]))
    flat = px.mean(dim=(1, 2, 3), keepdim=True).expand_as(px)
    s_flat = score(Reconstruction(images=spec.normalize(flat)), truth, spec, success_ssim=0.0)
    assert s_flat.recovered == 0
    s_true = score(Reconstruction(images=truth.images.clone(), labels=truth.labels), truth, spec)
    assert s_true.recovered == 4 and s_true.psnr == 100.0 and s_true.label_acc == 1.0
    psnr, ssim = flat_baseline(px.numpy())
    assert np.all(ssim < 1.0) and np.all((psnr > 10) & (psnr < 20))


def _case():
    spec = DataSpec(shape=(1, 32, 32), num_classes=2, mean=(0.5,), std=(0.25,))
    px = torch.as_tensor(_faces(4))
    return spec, px, Truth(images=spec.normalize(px), labels=torch.tensor([1, 1, 1, 1]), indices=(5, 6, 7, 8))


def test_every_score_carries_its_flat_image_baseline_per_image_and_averaged():
    spec, px, truth = _case()
    flat = px.mean(dim=(1, 2, 3), keepdim=True).expand_as(px)  # each image's PSNR-optimal constant
    s = score(Reconstruction(images=spec.normalize(flat)), truth, spec)
    img = s.per_image
    assert np.allclose(img.psnr, img.baseline_psnr, atol=0.05)  # the blank guess scores its own baseline
    assert abs(s.margin) < 0.05 and s.baseline_psnr == np.mean(img.baseline_psnr)
    assert img.index.tolist() == [5, 6, 7, 8] and img.recovered.tolist() == [False] * 4
    assert np.all(np.isnan(img.lpips)) and np.isnan(s.lpips)  # no LPIPS function given
    close = score(Reconstruction(images=truth.images + 0.2 * torch.randn(truth.images.shape,
                                                                         generator=torch.Generator().manual_seed(0))),
                  truth, spec)
    assert close.margin > 8 and close.recovered == 4 and close.success


def test_no_row_within_the_margin_of_its_baseline_is_a_success():
    spec, px, truth = _case()
    gen = torch.Generator().manual_seed(0)
    good = (px[:1] + 0.03 * torch.randn(px[:1].shape, generator=gen)).clamp(0, 1)
    # one image recovered almost exactly (SSIM > 0.9), the other three inverted: the row as a
    # whole does no better than a blank guess, so it recovers nothing
    mixed = torch.cat([good, 1 - px[1:]])
    s = score(Reconstruction(images=spec.normalize(mixed)), truth, spec)
    assert s.per_image.ssim[0] > 0.9 and s.margin <= 0.5
    assert s.recovered == 0 and not s.success
    # the same row with a margin rule of -inf: the first image alone counts
    loose = score(Reconstruction(images=spec.normalize(mixed)), truth, spec, success_margin=-1e9)
    assert loose.recovered == 1 and loose.per_image.recovered.tolist() == [True, False, False, False]
    noisy = [(px + sigma * torch.randn(px.shape, generator=gen)).clamp(0, 1) for sigma in (0.02, 0.1, 0.2, 0.3)]
    for rec in noisy + [mixed, px.flip(-1)]:
        s = score(Reconstruction(images=spec.normalize(rec)), truth, spec, success_ssim=0.0)
        assert not s.success or s.margin > 0.5, (s.margin, s.recovered)
