"""The Bayes-optimal adversary (Balunovic et al., "Bayesian Framework for Gradient Leakage",
ICLR 2022).

The defense is public, so the attacker knows p(g_obs | x): the distribution of the update it
observes given the client's data. It maximizes the posterior

    x* = argmax_x  log p(g_obs | g(x)) + log p(x)

with g(x) the update the client would send for x (gradient units; several local steps are
unrolled). The likelihood follows the defenses in `obs.protocol.defenses`, by name:

- gaussian (sigma):   -log p = ||g_obs - g(x)||^2 / (2 sigma^2)
- laplacian (scale):  -log p = ||g_obs - g(x)||_1 / b
- dpsgd:              Gaussian with the std its noise has on the averaged gradient,
                      noise_multiplier * max_grad_norm / (batch_size * sqrt(steps))
                      (per-sample clipping is not modelled)
- prune / topk:       the same, on the kept entries only (the mask is read off the observed
                      zeros: pruned entries carry no information about x)
- none of these:      Gaussian with sigma = `bayes.sigma` (exact matching in the limit)

Other known defenses with a registered `adapt` hook (clipping, ...) are applied to g(x)
first. The image prior is p(x) ∝ exp(-tv * TV(x)) on the valid box: TV is the anisotropic
total variation and iterates are projected (clipped) onto the pixel range after every step.
The likelihood is averaged over the observed entries, so `bayes.tv` transfers between model
sizes. Optimization as in the authors' code: Adam from a random image with an exponentially
decaying step size, the likelihood weight rising geometrically from `anneal` to 1 over the
first half (their factor schedule). Their CIFAR-10 schedule (lr 0.5, x0.94 per step, 200
steps) stops far from convergence on 32-px LFW with LeNet (mean PSNR 10.0 dB vs 16.0 dB
for lr 0.1, x0.995, 500 steps under Laplacian b = 0.1); the defaults (lr 0.1, x0.999 per
step, 3000 steps, tv 0.1) come from that tuning.

The weighting factor between likelihood and prior (`bayes.tv`) is tuned as the authors'
code does: on held-out data the attacker owns, it simulates the client under the same
model, protocol and defense, runs the attack for a geometric grid of weights (halving), and
keeps the weight with the best mean PSNR, then refines it on a finer grid around the best
(`tune_prior_weight`; benchmarks/bench_bayes.py runs it). `bayes.likelihood=l2|cosine`
replaces the likelihood by plain L2 or cosine matching with the same prior and budget (the
non-Bayesian attacks the paper compares against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.func import vmap

from fedattack.attacks.base import AttackContext, LogRange, register_attack
from fedattack.attacks.engine import Params, num_images, target, trial_update
from fedattack.attacks.labels import recover_labels
from fedattack.metrics import score
from fedattack.validate import check_choice, check_range
from fedattack.threat import Observation, Reconstruction, Truth

LIKELIHOODS = ["auto", "gaussian", "laplacian", "l2", "cosine"]


@dataclass
class BayesParams:
    iterations: int = 3000  # authors: 200 (see the module notes)
    lr: float = 0.1  # Adam step size (authors' CIFAR-10 setting: 0.5)
    lr_decay: float = 0.999  # exponential decay of the step size per step (authors: 0.94)
    tv: float = 0.1  # prior weight of total variation (tune it: tune_prior_weight)
    likelihood: str = "auto"  # auto (from the known defense) | gaussian | laplacian | l2 | cosine
    sigma: float = 1e-3  # noise scale assumed when no noise defense is known (auto)
    anneal: float = 0.01  # likelihood weight at the start, rising geometrically to 1 over the first half
    restarts: int = 1

    def validate(self, name: str) -> None:
        check_range(name, "iterations", self.iterations, 1)
        check_range(name, "lr", self.lr, 0, lo_open=True)
        check_range(name, "lr_decay", self.lr_decay, 0, 1, lo_open=True)
        check_range(name, "tv", self.tv, 0)
        check_choice(name, "likelihood", self.likelihood, LIKELIHOODS)
        check_range(name, "sigma", self.sigma, 0, lo_open=True)
        check_range(name, "anneal", self.anneal, 0, 1, lo_open=True)
        check_range(name, "restarts", self.restarts, 1)


def _noise_model(obs: Observation, params: BayesParams) -> tuple[str, float]:
    """(kind, scale) of the additive noise on g: from the protocol, or the override."""
    if params.likelihood in ("l2", "cosine"):
        return params.likelihood, 1.0
    if params.likelihood == "gaussian":
        d = obs.protocol.defense("gaussian")
        return "gaussian", float(d.params.get("sigma", params.sigma)) if d else params.sigma
    if params.likelihood == "laplacian":
        d = obs.protocol.defense("laplacian")
        return "laplacian", float(d.params.get("scale", params.sigma)) if d else params.sigma
    for d in obs.protocol.defenses:
        if d.name == "gaussian" and "sigma" in d.params:
            return "gaussian", float(d.params["sigma"])
        if d.name == "laplacian" and "scale" in d.params:
            return "laplacian", float(d.params["scale"])
        if d.name == "dpsgd" and {"noise_multiplier", "max_grad_norm"} <= set(d.params):
            # per step N(0, (z C)^2) on the sum of clipped per-sample gradients, divided by the
            # batch size; the update averages `steps` such steps
            p = obs.protocol
            std = float(d.params["noise_multiplier"]) * float(d.params["max_grad_norm"]) / max(1, p.batch_size)
            return "gaussian", std / math.sqrt(max(1, p.local_steps))
    return "gaussian", params.sigma


def kept_entries(obs: Observation, target: Params) -> Params | None:
    """Pruning masks read off the observed zeros, when a sparsifying defense is known."""
    if not any(d.name in ("prune", "topk") for d in obs.protocol.defenses):
        return None
    return {k: (v != 0).to(v.dtype) for k, v in target.items()}


def neg_log_likelihood(trial: Params, target: Params, kind: str, scale: float,
                       mask: Params | None = None) -> torch.Tensor:
    """-log p(g_obs | g(x)) up to a constant, averaged over the (kept) entries.

    Trial entries may carry leading candidate dimensions; the result then has them too."""
    names = list(target)

    def total(values: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(v.flatten(v.dim() - target[k].dim()).sum(-1) for k, v in values.items())

    t = {k: trial[k] * mask[k] if mask else trial[k] for k in names}
    if kind == "cosine":
        dot = total({k: t[k] * target[k] for k in names})
        nt = torch.sqrt(total({k: t[k] ** 2 for k in names}))
        no = torch.sqrt(sum((target[k] ** 2).sum() for k in names))
        return 1 - dot / (nt * no + 1e-12)
    count = sum(float(mask[k].sum()) if mask else target[k].numel() for k in names)
    diff = {k: t[k] - (target[k] * mask[k] if mask else target[k]) for k in names}
    if kind == "laplacian":
        value = total({k: d.abs() for k, d in diff.items()}) / scale
    elif kind == "gaussian":
        value = total({k: d**2 for k, d in diff.items()}) / (2 * scale**2)
    else:  # l2
        value = total({k: d**2 for k, d in diff.items()})
    return value / max(count, 1.0)


def tv_per_candidate(x: torch.Tensor) -> torch.Tensor:
    """total_variation of each candidate batch x[c] (x: (C, n, channels, H, W))."""
    dx = torch.abs(x[..., :, :-1] - x[..., :, 1:]).flatten(1).mean(1)
    dy = torch.abs(x[..., :-1, :] - x[..., 1:, :]).flatten(1).mean(1)
    return dx + dy


def optimize(obs: Observation, params: BayesParams, ctx: AttackContext, labels: torch.Tensor,
             weights: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """MAP estimates for several prior weights at once (and `params.restarts` starts each).

    Candidates are a batch dimension (torch.func.vmap): returns images (W, n, C, H, W) and
    the final objective (W,), the best restart per weight."""
    device = ctx.device
    n, w, r = labels.shape[0], len(weights), params.restarts
    single = trial_update(obs, device, adaptive=True)  # the Bayes adversary knows the defense
    if w * r == 1:  # one candidate: plain autograd is faster than vmap

        def trial_fn(x: torch.Tensor, y: torch.Tensor) -> Params:
            return {k: v[None] for k, v in single(x[0], y).items()}
    else:
        trial_fn = vmap(single, in_dims=(0, None))
    observed = target(obs, device)
    kind, scale = _noise_model(obs, params)
    mask = kept_entries(obs, observed)
    lo, hi = (b.to(device) for b in obs.data.bounds(device))
    tv = torch.tensor([float(v) for v in weights for _ in range(r)], device=device)
    starts = [torch.randn((n, *obs.data.shape), generator=ctx.generator(i)) for i in range(r)]
    x = torch.stack(starts * w).to(device)
    x = torch.max(torch.min(x, hi), lo).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=params.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=params.lr_decay)

    def objective(fac: float = 1.0) -> torch.Tensor:
        return fac * neg_log_likelihood(trial_fn(x, labels), observed, kind, scale, mask) + tv * tv_per_candidate(x)

    ramp = max(1, params.iterations // 2)
    for it in range(params.iterations):
        opt.zero_grad(set_to_none=True)
        losses = objective(params.anneal ** max(0.0, 1 - it / ramp))
        if not torch.isfinite(losses).all():
            raise FloatingPointError("the reconstruction diverged")
        losses.sum().backward(inputs=[x])
        opt.step()
        sched.step()
        with torch.no_grad():
            x.copy_(torch.max(torch.min(x, hi), lo))
    with torch.no_grad():
        final = objective().view(w, r)
    best = final.argmin(1)
    images = x.detach().view(w, r, *x.shape[1:])[torch.arange(w), best]
    return images, final[torch.arange(w), best]


@register_attack("bayes", params=BayesParams, tunable={"tv": LogRange(1e-3, 10.0), "lr": LogRange(0.01, 0.3)},
                 paper="Balunovic et al., Bayesian Framework for Gradient Leakage, ICLR 2022")
def bayes(obs: Observation, params: BayesParams, ctx: AttackContext) -> Reconstruction:
    labels, method = recover_labels(obs, num_images(obs), ctx.labels)
    images, losses = optimize(obs, params, ctx, labels.to(ctx.device), [params.tv])
    kind, scale = _noise_model(obs, params)
    return Reconstruction(images=images[0], labels=labels,
                          info={"loss": float(losses[0]), "likelihood": kind, "noise_scale": scale, "tv": params.tv,
                                "label_method": method, "iterations": params.iterations})


# -- tuning the prior weight (the authors' procedure) -----------------------------------

def _psnr_per_weight(obs: Observation, truth: Truth, params: BayesParams, ctx: AttackContext,
                     weights: list[float]) -> list[float]:
    labels, _ = recover_labels(obs, num_images(obs), ctx.labels)
    images, _ = optimize(obs, params, ctx, labels.to(ctx.device), weights)
    return [float(score(Reconstruction(images=img, labels=labels), truth, obs.data).psnr) for img in images]


def tune_prior_weight(heldout: Sequence[tuple[Observation, Truth]], params: BayesParams,
                      ctx: AttackContext | None = None, start: float = 1.0, stop: float = 1e-2,
                      refine: int = 4) -> tuple[float, list[tuple[float, float]]]:
    """Tune `tv` on held-out (observation, truth) pairs the attacker simulated itself.

    As in the authors' code: halve the weight from `start` down to `stop` and keep the
    weights with the best mean PSNR (within 1e-3 dB), then scan `refine` weights between
    half and twice their mean and keep the best. (The authors halve from 1e7 to 5e-6; the
    range is a parameter.) Each stage's weights run together as one batch. Returns
    (best weight, [(weight, mean PSNR), ...])."""
    ctx = ctx or AttackContext()
    tried: list[tuple[float, float]] = []

    def evaluate(weights: list[float]) -> list[float]:
        sums = [0.0] * len(weights)
        for o, t in heldout:
            for i, v in enumerate(_psnr_per_weight(o, t, params, ctx, weights)):
                sums[i] += v / max(1, len(heldout))
        tried.extend(zip(weights, sums))
        return sums

    grid, w = [], start
    while w >= stop * (1 - 1e-9):
        grid.append(w)
        w /= 2
    values = evaluate(grid)
    best_psnr = max(values)
    best_ws = [g for g, v in zip(grid, values) if abs(v - best_psnr) < 1e-3]
    center = sum(best_ws) / len(best_ws)
    best_w = center
    if refine > 1:
        fine = [center * (0.5 + 1.5 * i / (refine - 1)) for i in range(refine)]
        fine = [f for f in fine if all(abs(f - g) > 1e-9 * f for g in grid)]
        if fine:
            for f, v in zip(fine, evaluate(fine)):
                if v > best_psnr:
                    best_psnr, best_w = v, f
    return best_w, tried
