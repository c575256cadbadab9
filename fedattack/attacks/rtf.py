"""Robbing the Fed (Fowl et al., ICLR 2022): a malicious server's imprint block.

The server puts a block in front of the model it sends: a linear layer whose `num_bins`
rows all measure one statistic of the flattened input (here its average, i.e. brightness),
each with a bias at a bin edge, then a ReLU, then a linear map back to the input shape that
feeds the original model. Bin edges are quantiles of the statistic's distribution, assumed
Gaussian N(stat_mean, stat_std^2) in model-input (normalized) space, so each bin is equally
likely to catch a sample.

Row k fires for every sample whose statistic exceeds edge k, so with edges sorted, the
gradient of row k minus that of row k+1 holds exactly the samples of bin k:
dW_k - dW_{k+1} = sum_j g_j x_j^T and db_k - db_{k+1} = sum_j g_j over those samples.
A bin with one sample gives that sample exactly: x = (dW_k - dW_{k+1}) / (db_k - db_{k+1}).
The map back to the input has identical columns, so every row passes the same g_j back and
the differences stay clean. Because the read-off is linear in the gradient, it works just as
well on an aggregate of many clients' updates (SecAgg): bins simply fill up faster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import torch
import torch.nn as nn

from fedattack.attacks.base import AttackContext, register_attack
from fedattack.attacks.engine import num_images
from fedattack.attacks.labels import recover_labels
from fedattack.config import check_range
from fedattack.models import EXTENSIONS
from fedattack.threat import Observation, Reconstruction

PREFIX = "imprint."
MEASURE_SCALE = 1e-2


@dataclass
class RTFParams:
    num_bins: int = 128  # rows of the imprint layer (about 2x the batch the server expects)
    stat_mean: float = 0.0  # mean of the measured statistic (input average in normalized space)
    stat_std: float = 0.7  # its spread across images (LFW crops: 0.72; natural images: about 0.5-0.8)
    rel_threshold: float = 1e-5  # bins with |db difference| below this fraction of the largest are empty

    def validate(self, name: str) -> None:
        check_range(name, "num_bins", self.num_bins, 2)
        check_range(name, "stat_std", self.stat_std, 0, lo_open=True)
        check_range(name, "rel_threshold", self.rel_threshold, 0, 1)


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


def imprint_layer(obs: Observation) -> str:
    """Name (without .weight) of the imprint layer: the first fully connected `imprint.*` on the input."""
    d = math.prod(obs.data.shape)
    for n, p in obs.global_params.items():
        if n.startswith(PREFIX) and n.endswith(".weight") and p.ndim == 2 and p.shape[1] == d:
            return n[: -len(".weight")]
    raise ValueError("no imprint block in the model: run with server.mode=malicious so the server sends one")


def read_bins(w: torch.Tensor, b: torch.Tensor, dw: torch.Tensor, db: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bin (sum of g_j x_j, sum of g_j) from consecutive row differences, rows sorted by edge."""
    order = torch.argsort(-b / w.norm(dim=1))  # rows share a direction u; row k fires when u . x > edge k
    dw, db = dw[order], db[order]
    bin_w = torch.cat([dw[:-1] - dw[1:], dw[-1:]])
    bin_b = torch.cat([db[:-1] - db[1:], db[-1:]])
    return bin_w, bin_b


@register_attack("rtf", params=RTFParams,
                 paper="Fowl et al., Robbing the Fed: Directly Obtaining Private Data in Federated Learning "
                       "with Modified Models, ICLR 2022",
                 scope="any", needs_malicious=True, model_extension="imprint")
def rtf(obs: Observation, params: RTFParams, ctx: AttackContext) -> Reconstruction:
    layer = imprint_layer(obs)
    grad = obs.gradient_estimate()
    w, b = obs.global_params[layer + ".weight"].double(), obs.global_params[layer + ".bias"].double()
    bin_w, bin_b = read_bins(w, b, grad[layer + ".weight"].double(), grad[layer + ".bias"].double())
    strength = bin_b.abs()
    full = torch.nonzero(strength > params.rel_threshold * strength.max()).flatten()
    if not torch.isfinite(strength.max()) or strength.max() == 0 or len(full) == 0:
        raise ValueError("the imprint layer's gradient is zero: no bin caught a sample")
    n = num_images(obs)
    keep = full[torch.argsort(strength[full], descending=True)[:n]]
    images = (bin_w[keep] / bin_b[keep, None]).float().view(-1, *obs.data.shape)
    labels, method = recover_labels(obs, len(keep), ctx.labels)
    info = {"bins": int(w.shape[0]), "bins_filled": int(len(full)), "layer": layer, "label_method": method}
    return Reconstruction(images=images, labels=labels, info=info)
