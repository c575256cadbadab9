"""CPL (Wei et al., "A Framework for Evaluating Gradient Leakage Attacks in Federated
Learning", ESORICS 2020).

Gradient matching as in DLG, with the choices the paper found to matter:
- a geometric seed instead of noise: a random patch of half the image size tiled 2x2
  (`cpl.init=patch`, the authors' default), or one random colour (`color`); `randn` is
  DLG's Gaussian noise, for comparison;
- the labels read off the last layer's gradient first and held fixed (so only the images
  are optimized);
- the squared L2 distance of the gradients, minimized as the authors' published notebooks
  do: up to 32 px with torch's L-BFGS at its defaults (step 1, up to 20 inner iterations
  per step, history 100) for 300 steps; at 64 and 128 px with AdamW (lr 0.01, 1000 steps)
  on the image clipped to valid pixels (`cpl.optimizer=auto`); optionally stopping once the
  gradient loss falls to `cpl.tol` (the paper's termination condition).
A batch is attacked as a whole, one seed per image. The seeds are drawn in pixel space
[0, 1] and mapped to the model's normalized input space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedattack.attacks.base import AttackContext, Choice, register_attack
from fedattack.attacks.engine import DISTANCES, functional_model, gradient, num_images, target
from fedattack.attacks.labels import recover_labels
from fedattack.validate import check_choice, check_range
from fedattack.threat import DataSpec, Observation, Reconstruction


@dataclass
class CPLParams:
    init: str = "patch"  # patch (random patch tiled 2x2) | color (one random colour) | randn (DLG's noise)
    optimizer: str = "auto"  # auto: L-BFGS up to 32 px, AdamW above (the authors' 64/128 px setting) | lbfgs | adamw
    iterations: int = 300  # L-BFGS steps
    max_iter: int = 20  # L-BFGS inner iterations per step (torch's default, the authors' setting)
    lr: float = 1.0  # L-BFGS step size
    history_size: int = 100
    adamw_iterations: int = 1000
    adamw_lr: float = 0.01
    loss: str = "l2"  # l2 (the paper's) | cosine
    tol: float = 0.0  # stop once the gradient loss is <= tol (0: run every step)
    restarts: int = 1

    def validate(self, name: str) -> None:
        check_choice(name, "init", self.init, ["patch", "color", "randn"])
        check_choice(name, "optimizer", self.optimizer, ["auto", "lbfgs", "adamw"])
        check_range(name, "adamw_iterations", self.adamw_iterations, 1)
        check_range(name, "adamw_lr", self.adamw_lr, 0, lo_open=True)
        check_choice(name, "loss", self.loss, sorted(DISTANCES))
        check_range(name, "iterations", self.iterations, 1)
        check_range(name, "max_iter", self.max_iter, 1)
        check_range(name, "lr", self.lr, 0, lo_open=True)
        check_range(name, "history_size", self.history_size, 1)
        check_range(name, "tol", self.tol, 0)
        check_range(name, "restarts", self.restarts, 1)


def seed_images(init: str, n: int, spec: DataSpec, gen: torch.Generator) -> torch.Tensor:
    """n seeds in model-input space: a tiled random patch, a flat random colour, or Gaussian noise."""
    c, h, w = spec.shape
    if init == "randn":
        return torch.randn((n, c, h, w), generator=gen)
    if init == "color":
        pixels = torch.rand((n, c, 1, 1), generator=gen).expand(n, c, h, w)
    else:
        patch = torch.rand((n, c, (h + 1) // 2, (w + 1) // 2), generator=gen)
        pixels = patch.repeat(1, 1, 2, 2)[:, :, :h, :w]
    return spec.normalize(pixels.contiguous())


def _optimize(loss_fn, x: torch.Tensor, params: CPLParams, use_lbfgs: bool) -> tuple[float, int, int]:
    """Minimize loss_fn(x) in place; (last loss, steps, gradient evaluations). Stops at `tol`,
    and steps back to the last finite point if the optimization diverges."""
    if use_lbfgs:
        opt = torch.optim.LBFGS([x], lr=params.lr, max_iter=params.max_iter, history_size=params.history_size)
        budget = params.iterations
    else:
        opt = torch.optim.AdamW([x], lr=params.adamw_lr)
        budget = params.adamw_iterations
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        opt.zero_grad()
        loss = loss_fn(x)
        loss.backward(inputs=[x])
        return loss.detach()

    loss_value, steps = float("inf"), 0
    before = x.detach().clone()
    with torch.enable_grad():
        while steps < budget:
            before = x.detach().clone()
            loss = float(opt.step(closure))  # the loss at `before`
            if not math.isfinite(loss) or loss <= params.tol:
                with torch.no_grad():
                    x.copy_(before)
                loss_value = loss if math.isfinite(loss) else loss_value
                break
            loss_value, steps = loss, steps + 1
    if not torch.isfinite(x).all():
        with torch.no_grad():
            x.copy_(before)
    return loss_value, steps, evaluations


@register_attack("cpl", params=CPLParams, tunable={"init": Choice(("patch", "color", "randn"))},
                 paper="Wei et al., A Framework for Evaluating Gradient Leakage Attacks in Federated Learning, "
                       "ESORICS 2020")
def cpl(obs: Observation, params: CPLParams, ctx: AttackContext) -> Reconstruction:
    v = functional_model(obs, ctx.device)
    weights = {k: p.detach().requires_grad_(True) for k, p in v.params.items()}
    observed = target(obs, ctx.device)
    dist = DISTANCES[params.loss]
    n = num_images(obs)
    labels, method = recover_labels(obs, n, ctx.labels)
    labels = labels.to(ctx.device)
    use_lbfgs = params.optimizer == "lbfgs" or (params.optimizer == "auto" and max(obs.data.shape[1:]) <= 32)
    lo, hi = (b.to(ctx.device) for b in obs.data.bounds(ctx.device))

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        if not use_lbfgs:  # the authors' AdamW runs see the image clipped to valid pixels
            x = torch.maximum(torch.minimum(x, hi), lo)
        return dist(gradient(v, weights, x, labels), observed)

    best: tuple[float, torch.Tensor, int, int] | None = None
    for r in range(params.restarts):
        x = seed_images(params.init, n, obs.data, ctx.generator(r)).to(ctx.device).requires_grad_(True)
        loss_value, steps, evaluations = _optimize(loss_fn, x, params, use_lbfgs)
        if math.isfinite(loss_value) and (best is None or loss_value < best[0]):
            best = (loss_value, x.detach(), steps, evaluations)
    if best is None:
        raise FloatingPointError("every restart diverged")
    loss_value, x, steps, evaluations = best
    if not use_lbfgs:
        x = torch.maximum(torch.minimum(x, hi), lo)
    return Reconstruction(images=x, labels=labels, info={
        "loss": loss_value, "iterations": steps, "evaluations": evaluations, "label_method": method,
        "optimizer": "lbfgs" if use_lbfgs else "adamw"})
