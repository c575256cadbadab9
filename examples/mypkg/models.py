"""A model factory of your own: fn(in_shape, num_classes, act, width=...) -> nn.Module.

`act` is a zero-argument callable that returns a new activation module (torch.nn.Sigmoid for
model.activation=sigmoid): call act() once per layer. A `width` parameter lets model.width set it.
"""

from __future__ import annotations

import torch.nn as nn


def small_cnn(in_shape, num_classes, act, width=16):
    c, h, w = in_shape
    return nn.Sequential(
        nn.Conv2d(c, width, 3, padding=1), act(),
        nn.Conv2d(width, width, 3, stride=2, padding=1), act(),
        nn.Flatten(),
        nn.Linear(width * ((h + 1) // 2) * ((w + 1) // 2), num_classes),
    )
