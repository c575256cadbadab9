"""`mixup`: Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018, evaluated as a
defense against gradient inversion as in InstaHide-style evaluations (Huang et al.,
Evaluating Gradient Inversion Attacks and Defenses in Federated Learning, NeurIPS 2021).

Each training image is mixed with a partner drawn uniformly from the client's local dataset
(InstaHide's private pool; the round's samples when no dataset is at hand):
x = lam * x_i + (1 - lam) * x_j, with one lam ~ Beta(alpha, alpha) per batch, and the target
becomes the soft label lam * onehot(y_i) + (1 - lam) * onehot(y_j) (local training's loss
takes (N, C) class probabilities).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedattack.defenses.base import DefenseContext, DefenseSpec, register_defense
from fedattack.validate import check_range


@dataclass
class MixupParams:
    alpha: float = 1.0  # Beta(alpha, alpha) of the mixing weight

    def validate(self, name: str) -> None:
        check_range(name, "alpha", self.alpha, lo=0.0, lo_open=True)


def soft(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return y.float() if y.dim() == 2 else F.one_hot(y, num_classes).float()


def mixup_batch(x: torch.Tensor, y: torch.Tensor, params: MixupParams, ctx: DefenseContext):
    if len(x) == 0:
        return x, soft(y, ctx.num_classes)
    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=ctx.generator)))
    lam = float(rng.beta(params.alpha, params.alpha))
    if ctx.dataset is not None and ctx.partition is not None and len(ctx.partition):
        px, py = ctx.dataset.get(ctx.partition[rng.integers(0, len(ctx.partition), size=len(x))])
    else:
        j = torch.as_tensor(rng.integers(0, len(ctx.images), size=len(x)))
        px, py = ctx.images[j], ctx.labels[j]
    xm = lam * x + (1 - lam) * px.to(x.device, x.dtype)
    ym = lam * soft(y, ctx.num_classes) + (1 - lam) * soft(py.to(y.device), ctx.num_classes)
    return xm, ym


register_defense(DefenseSpec(
    name="mixup", params=MixupParams, where="training", main_param="alpha", on_batch=mixup_batch,
    paper="Zhang et al., mixup: Beyond Empirical Risk Minimization, ICLR 2018"))
