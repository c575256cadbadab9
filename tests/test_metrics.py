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


def test_unmatched_truth_counts_as_not_leaked():
    t = _faces(3)
    s = match_and_score(t[:1], t)
    assert (s.match >= 0).sum() == 1 and s.psnr[s.match < 0].max() == 0 and s.ssim[s.match < 0].max() == 0


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
    assert np.all(flat_baseline(px.numpy()) < 1.0)
