"""Robbing the Fed's imprint block (Fowl et al., ICLR 2022), the model extension "imprint".

A malicious server puts the block in front of the model it sends: a linear layer whose
`num_bins` rows all measure one statistic of the flattened input (its average, i.e.
brightness), each with a bias at a bin edge, then a ReLU, then a linear map back to the input
shape that feeds the original model. Bin edges are quantiles of the statistic's distribution,
assumed Gaussian N(stat_mean, stat_std^2) in model-input (normalized) space, so each bin is
equally likely to catch a sample. The read-off of the images is the `rtf` attack
(fedattack.attacks.rtf).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch
import torch.nn as nn

from fedattack.models.extensions import EXTENSIONS

MEASURE_SCALE = 1e-2


def bin_edges(num_bins: int, mean: float, std: float) -> torch.Tensor:
    """num_bins lower edges of equal-mass bins of N(mean, std^2); the first is mean - 5 std."""
    dist = NormalDist(mean, std)
    return torch.tensor([mean - 5 * std] + [dist.inv_cdf(k / num_bins) for k in range(1, num_bins)])


class ImprintBlock(nn.Module):
    """Linear (num_bins rows, one statistic, biases at bin edges) -> ReLU -> linear back to the input."""

    def __init__(self, in_shape: tuple[int, int, int], num_bins: int, stat_mean: float, stat_std: float):
        super().__init__()
        self.in_shape = tuple(in_shape)
        d = math.prod(in_shape)
        self.linear0 = nn.Linear(d, num_bins)
        self.linear1 = nn.Linear(num_bins, d)
        self.stat = (num_bins, stat_mean, stat_std)
        self.reset_malicious()

    @torch.no_grad()
    def reset_malicious(self) -> None:
        num_bins, mean, std = self.stat
        d = self.linear0.in_features
        # Row k computes MEASURE_SCALE * (average(x) - edge_k). Its gradients do not depend on
        # MEASURE_SCALE, but two things do: the float32 rounding of the sent weights (small
        # weights keep the update new - sent exact to more digits) and how far one local SGD
        # step turns the rows away from the shared measurement (small weights move more).
        # 1e-2 keeps both harmless for the models here, over one and several local steps.
        self.linear0.weight.fill_(MEASURE_SCALE / d)
        self.linear0.bias.copy_(-MEASURE_SCALE * bin_edges(num_bins, mean, std))
        # Identical columns: every row passes the same gradient back, so row differences are clean.
        # The scale keeps the original model's input near 1 (sum_k (s - edge_k)+ ~ 0.56 num_bins std).
        self.linear1.weight.fill_(1.0 / (num_bins * MEASURE_SCALE * std))
        self.linear1.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.linear0(x.flatten(1)))
        return self.linear1(h).view(-1, *self.in_shape)


class Imprinted(nn.Module):
    """The server's model: the imprint block in front of the original model."""

    def __init__(self, model: nn.Module, block: ImprintBlock):
        super().__init__()
        self.imprint = block
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.imprint(x))


@EXTENSIONS.register("imprint", doc="Robbing the Fed's imprint block in front of the model (malicious server)")
def imprint(model: nn.Module, in_shape, num_classes: int, num_bins: int = 128, stat_mean: float = 0.0,
            stat_std: float = 0.7, **_: object) -> nn.Module:
    return Imprinted(model, ImprintBlock(tuple(in_shape), num_bins, stat_mean, stat_std))
