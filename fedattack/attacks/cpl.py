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
Each run ends on the best iterate it saw. As in DLG (fedattack.attacks.dlg), a seed that
stalls far from a match hands its remaining L-BFGS steps to a fresh seed (`cpl.restart_stalled`):
on one 32 px LFW face and a ReLU MLP, one seed reached about 8 dB on each of 10 faces, the
stall rule 100 dB on all 10.
A batch is attacked as a whole, one seed per image. The seeds are drawn in pixel space
[0, 1] and mapped to the model's normalized input space.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedattack.attacks.base import AttackContext, Choice, register_attack
from fedattack.attacks.engine import DISTANCES, functional_model, gradient, num_images, target
from fedattack.attacks.labels import recover_labels
from fedattack.attacks.optimize import stalled
from fedattack.validate import check_choice, check_range
from fedattack.threat import DataSpec, Observation, Reconstruction

MAX_CUTS = 3  # times a diverging run goes back to its best iterate with a tenth of the step size


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
    restart_stalled: bool = True  # L-BFGS: a seed that stalls far from a match gives its remaining steps to a new one

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


def _optimize(loss_fn, x: torch.Tensor, params: CPLParams, use_lbfgs: bool,
              fresh: Callable[[], torch.Tensor] | None = None) -> tuple[float, int, int, int, int]:
    """Minimize loss_fn(x) in place; (best loss, steps, gradient evaluations, step-size cuts,
    starts). Stops at `tol` and ends on the best iterate it saw, over all starts.

    Stalled starts (L-BFGS, with `fresh`, which draws a new seed): as in DLG's setting
    (fedattack.attacks.optimize.stalled), a seed can sit on a plateau where torch's L-BFGS ends
    every step after one evaluation far from a match (one 32 px LFW face on a ReLU MLP: a
    gradient loss of 2.7 after 300 steps, 8 dB); such a start hands its remaining steps to a
    fresh seed. Where a step diverges (a loss that is not finite), the run goes back to its best
    iterate and goes on with a tenth of the step size, up to MAX_CUTS times."""
    budget = params.iterations if use_lbfgs else params.adamw_iterations

    def optimizer(scale: float) -> torch.optim.Optimizer:
        if use_lbfgs:
            return torch.optim.LBFGS([x], lr=params.lr * scale, max_iter=params.max_iter,
                                     history_size=params.history_size)
        return torch.optim.AdamW([x], lr=params.adamw_lr * scale)

    cuts = 0
    opt = optimizer(1.0)
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        opt.zero_grad()
        loss = loss_fn(x)
        loss.backward(inputs=[x])
        return loss.detach()

    best, steps, starts = float("inf"), 0, 1
    best_at = x.detach().clone()
    losses: list[tuple[int, float]] = []  # this start's (evaluations so far, loss), one per step
    with torch.enable_grad():
        while steps < budget:
            before = x.detach().clone()
            loss = float(opt.step(closure))  # the loss at `before`
            if math.isfinite(loss) and loss < best:
                best, best_at = loss, before
            if math.isfinite(loss) and loss <= params.tol:
                break
            losses.append((evaluations, loss))
            if use_lbfgs and fresh is not None and math.isfinite(loss) and stalled(losses, params.max_iter):
                with torch.no_grad():
                    x.copy_(fresh())
                opt, losses, starts, steps = optimizer(0.1 ** cuts), [], starts + 1, steps + 1
                continue
            if not math.isfinite(loss) or not torch.isfinite(x).all():
                if cuts == MAX_CUTS:
                    break
                cuts += 1
                with torch.no_grad():
                    x.copy_(best_at)
                opt = optimizer(0.1 ** cuts)
                continue
            steps += 1
    with torch.no_grad():
        last = float(loss_fn(x)) if torch.isfinite(x).all() else math.inf
        if not last < best:
            x.copy_(best_at)
    return min(best, last), steps, evaluations, cuts, starts


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

    best: tuple[float, torch.Tensor, int, int, int, int] | None = None  # loss, images, steps, evaluations, cuts, starts
    for r in range(params.restarts):
        gen = ctx.generator(r)
        x = seed_images(params.init, n, obs.data, gen).to(ctx.device).requires_grad_(True)

        def fresh() -> torch.Tensor:  # a new seed where one stalls, drawn by the restart's own generator
            return seed_images(params.init, n, obs.data, gen).to(ctx.device)

        loss_value, steps, evaluations, cuts, starts = _optimize(loss_fn, x, params, use_lbfgs,
                                                                 fresh if params.restart_stalled else None)
        if math.isfinite(loss_value) and (best is None or loss_value < best[0]):
            best = (loss_value, x.detach(), steps, evaluations, cuts, starts)
    if best is None:
        raise FloatingPointError("every restart diverged")
    loss_value, x, steps, evaluations, cuts, starts = best
    if not use_lbfgs:
        x = torch.maximum(torch.minimum(x, hi), lo)
    return Reconstruction(images=x, labels=labels, info={
        "loss": loss_value, "iterations": steps, "evaluations": evaluations, "label_method": method,
        "optimizer": "lbfgs" if use_lbfgs else "adamw", "step_cuts": cuts, "starts": starts})
