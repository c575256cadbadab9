"""Model factories for the config tests: one follows the documented contract (`act` is a
zero-argument callable returning an activation module), one looks `act` up by name."""

from __future__ import annotations

import torch.nn as nn

ACTS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}


def small_cnn(in_shape, num_classes, act, width=8):
    return nn.Sequential(nn.Conv2d(in_shape[0], width, 3, padding=1), act(), nn.Flatten(),
                         nn.Linear(width * in_shape[1] * in_shape[2], num_classes))


def by_name(in_shape, num_classes, act):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes), ACTS[act]())
