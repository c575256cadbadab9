"""Datasets of a user's own (`data.name=tests.plugins.datasets:NAME`) that break the contract of
fedattack.data.images, each in one way."""

from __future__ import annotations

import numpy as np
import torch

from fedattack.data.images import ImageData, Splits, from_array, image_spec


def _splits(images: np.ndarray, labels: np.ndarray, cfg) -> Splits:
    spec = image_spec(cfg, 3, 2, (0.5,) * 3, (0.5,) * 3)
    return Splits(from_array(images, labels, spec), from_array(images, labels, spec))


def _images(shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def flattened(cfg, seed):
    return _splits(_images((6, 48)), np.arange(6) % 2, cfg)


def four_channels(cfg, seed):
    return _splits(_images((6, 8, 8, 4)), np.arange(6) % 2, cfg)


def more_labels(cfg, seed):
    return _splits(_images((6, 8, 8, 3)), np.arange(8) % 2, cfg)


def bytes_as_floats(cfg, seed):
    return _splits(_images((6, 8, 8, 3)) * 255, np.arange(6) % 2, cfg)


def fractional_labels(cfg, seed):
    return _splits(_images((6, 8, 8, 3)), np.arange(6) * 0.3, cfg)


def fetch_too_short(cfg, seed):  # an ImageData built by hand: 8 labels for 6 images
    images = torch.as_tensor(_images((6, 3, 8, 8)))
    data = ImageData(fetch=lambda i: images[i], targets=np.arange(8) % 2, spec=image_spec(cfg, 3, 2, (0.5,) * 3,
                                                                                               (0.5,) * 3))
    return Splits(data, data)
