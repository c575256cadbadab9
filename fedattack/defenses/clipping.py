"""`clip`: the whole update's L2 norm bounded in gradient units, as gradient clipping is
evaluated against inversion attacks (Li et al., Auditing Privacy Defenses in Federated
Learning via Generative Gradient Leakage, CVPR 2022): g <- g * min(1, bound / ||g||).

The attacker's model (`adapt`) applies the same bound to its simulated update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedattack.defenses.base import DefenseContext, DefenseSpec, register_defense
from fedattack.validate import check_range


@dataclass
class ClipParams:
    bound: float = 1.0  # L2 bound on the gradient g = -update / (lr * steps), all tensors together

    def validate(self, name: str) -> None:
        check_range(name, "bound", self.bound, lo=0.0, lo_open=True)


def global_norm(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((v.double() ** 2).sum() for v in tensors.values()))


def clip_to(update: dict[str, torch.Tensor], bound: float) -> dict[str, torch.Tensor]:
    """Scale `update` so its global L2 norm is at most `bound` (differentiable)."""
    norm = global_norm(update)
    factor = torch.clamp(bound / (norm + 1e-12), max=1.0)
    return {k: v * factor.to(v.dtype) for k, v in update.items()}


def clip_update(update, params: ClipParams, ctx: DefenseContext):
    return clip_to(update, params.bound * ctx.scale)


def clip_adapt(trial, observed, params: ClipParams, scale: float | None = None):
    if scale is None:
        raise ValueError("clip's adaptive model needs scale = lr * local steps: pass the Observation's protocol")
    return clip_to(trial, params.bound * scale)


register_defense(DefenseSpec(
    name="clip", params=ClipParams, where="update", main_param="bound", on_update=clip_update, adapt=clip_adapt,
    keeps_signs=lambda params: True,  # a positive factor
    # at the bound (a defense after it, noise, moves the norm off it: the factor is then not recognised)
    scales=lambda gradient, params: abs(float(global_norm(gradient)) - params.bound) <= 1e-3 * params.bound,
    paper="Li et al., Auditing Privacy Defenses in Federated Learning via Generative Gradient Leakage, CVPR 2022 "
          "(gradient clipping defense)"))
