"""Additive noise on the update, in gradient units (the defense strength DLG, GGL and the
Bayes adversary papers report): g = -update / (lr * steps) gets noise added and the client
sends -lr * steps * (g + noise).

- `gaussian`: N(0, sigma^2) per entry (Zhu et al., Deep Leakage from Gradients, NeurIPS 2019,
  Sec. 5; the Gaussian mechanism of DP without clipping).
- `laplacian`: Laplace(0, b) per entry (same evaluation, Laplacian noise).

The attacker's model of noise is the identity (`adapt` is None): noise enters an adaptive
attack through its likelihood, not through the simulated update.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedattack.defenses.base import DefenseContext, DefenseSpec, register_defense
from fedattack.validate import check_range


@dataclass
class GaussianParams:
    sigma: float = 0.01  # std of the noise added to each gradient entry

    def validate(self, name: str) -> None:
        check_range(name, "sigma", self.sigma, lo=0.0)


@dataclass
class LaplacianParams:
    scale: float = 0.01  # Laplace scale b of the noise added to each gradient entry (std = b * sqrt(2))

    def validate(self, name: str) -> None:
        check_range(name, "scale", self.scale, lo=0.0)


def gaussian_noise(shape: torch.Size, sigma: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * sigma


def laplace_noise(shape: torch.Size, scale: float, generator: torch.Generator | None) -> torch.Tensor:
    """Laplace(0, scale) by inverting the CDF of a uniform draw (seeded by `generator`)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64) - 0.5
    return (-scale * torch.sign(u) * torch.log1p(-2 * u.abs())).float()


def _add(update: dict[str, torch.Tensor], ctx: DefenseContext, draw) -> dict[str, torch.Tensor]:
    # update = -scale * g, so adding noise n to g adds -scale * n to the update
    return {k: v - ctx.scale * draw(v.shape).to(v.device, v.dtype) for k, v in update.items()}


def gaussian_update(update, params: GaussianParams, ctx: DefenseContext):
    if params.sigma == 0:
        return update
    return _add(update, ctx, lambda shape: gaussian_noise(shape, params.sigma, ctx.generator))


def laplacian_update(update, params: LaplacianParams, ctx: DefenseContext):
    if params.scale == 0:
        return update
    return _add(update, ctx, lambda shape: laplace_noise(shape, params.scale, ctx.generator))


register_defense(DefenseSpec(
    name="gaussian", params=GaussianParams, where="update", main_param="sigma", on_update=gaussian_update,
    keeps_signs=lambda params: params.sigma == 0,
    paper="Zhu et al., Deep Leakage from Gradients, NeurIPS 2019 (Gaussian noise defense)"))
register_defense(DefenseSpec(
    name="laplacian", params=LaplacianParams, where="update", main_param="scale", on_update=laplacian_update,
    keeps_signs=lambda params: params.scale == 0,
    paper="Zhu et al., Deep Leakage from Gradients, NeurIPS 2019 (Laplacian noise defense)"))
