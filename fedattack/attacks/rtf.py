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

import torch

from fedattack.attacks.base import AttackContext, read_gradient, register_attack
from fedattack.attacks.engine import num_images
from fedattack.attacks.labels import recover_labels
from fedattack.errors import AttackFailure
from fedattack.validate import check_range
from fedattack.threat import Observation, Reconstruction

PREFIX = "imprint."  # the imprint block's parameters (model extension "imprint", fedattack.models.imprint)


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


def imprint_layer(obs: Observation) -> str:
    """Name (without .weight) of the imprint layer: the first fully connected `imprint.*` on the input."""
    d = math.prod(obs.data.shape)
    for n, p in obs.global_params.items():
        if n.startswith(PREFIX) and n.endswith(".weight") and p.ndim == 2 and p.shape[1] == d:
            return n[: -len(".weight")]
    raise AttackFailure("no imprint block in the model: run with server.mode=malicious so the server sends one")


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
    grad = read_gradient(obs, "rtf")
    w, b = obs.global_params[layer + ".weight"].double(), obs.global_params[layer + ".bias"].double()
    bin_w, bin_b = read_bins(w, b, grad[layer + ".weight"].double(), grad[layer + ".bias"].double())
    strength = bin_b.abs()
    full = torch.nonzero(strength > params.rel_threshold * strength.max()).flatten()
    if not torch.isfinite(strength.max()) or strength.max() == 0 or len(full) == 0:
        raise AttackFailure("the imprint layer's gradient is zero: no bin caught a sample")
    n = num_images(obs)
    keep = full[torch.argsort(strength[full], descending=True)[:n]]
    images = (bin_w[keep] / bin_b[keep, None]).float().view(-1, *obs.data.shape)
    labels, method = recover_labels(obs, len(keep), ctx.labels)
    info = {"bins": int(w.shape[0]), "bins_filled": int(len(full)), "layer": layer, "label_method": method}
    return Reconstruction(images=images, labels=labels, info=info)
