"""Soft max-pooling: a smooth stand-in for the model's max-pools while an attack searches.

A max-pool passes each window's largest activation and nothing of the others, so the update of a
max-pooling CNN (Flower's quickstart CNN, the ConvNet) depends on which position wins each window,
and the gradient of a matching loss says nothing about the positions that lose: a search that
starts with the wrong winners can only move the pixels behind the current winners and settles in a
local minimum. A softmax over each window (weights softmax(v / T), output sum of weight x value)
passes every position's share; it is the max-pool as T goes to 0. An attack that starts at a
temperature T0 and lowers it to 0 during the first part of its run searches a smoother landscape
first and ends on the very model the client trained (continuation, or annealing, of the model
itself). The temperature is in activation units.

Only `torch.nn.MaxPool2d` modules whose windows tile their input (kernel equal to stride, no
padding, dilation 1, floor mode, no indices returned) are softened; any other pool, and
max-pooling a model's forward calls as a function, stay hard.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def tiles(pool: torch.nn.MaxPool2d) -> bool:
    """Whether the pool's windows tile its input, which is what `SoftMaxPool2d` softens."""
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    return (_pair(pool.kernel_size) == _pair(stride) and _pair(pool.padding) == (0, 0)
            and _pair(pool.dilation) == (1, 1) and not pool.ceil_mode and not pool.return_indices)


class SoftMaxPool2d(torch.nn.Module):
    """A tiling 2-D max-pool with a `temperature`: 0 is the max-pool it replaces, exactly; above
    0, each window's softmax-weighted mean (weights softmax(v / temperature))."""

    def __init__(self, pool: torch.nn.MaxPool2d):
        super().__init__()
        if not tiles(pool):
            raise ValueError(f"{pool} does not tile its input")
        self.kernel = _pair(pool.kernel_size)
        self.temperature = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temperature <= 0:
            return F.max_pool2d(x, self.kernel)
        (kh, kw), (h, w) = self.kernel, x.shape[-2:]
        ho, wo = h // kh, w // kw
        v = x[..., : ho * kh, : wo * kw].unflatten(-1, (wo, kw)).unflatten(-3, (ho, kh))
        v = v.transpose(-3, -2).flatten(-2)  # (..., ho, wo, kh * kw)
        return (torch.softmax(v / self.temperature, -1) * v).sum(-1)


def soften_max_pools(module: torch.nn.Module) -> tuple[SoftMaxPool2d, ...]:
    """Replace, in place, every tiling `MaxPool2d` of `module` by a `SoftMaxPool2d` at temperature
    0 (the same function); returns the replacements, whose temperatures an attack sets."""
    swapped = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.MaxPool2d) and tiles(child):
                soft = SoftMaxPool2d(child)
                setattr(parent, name, soft)
                swapped.append(soft)
    return tuple(swapped)
