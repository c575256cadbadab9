"""The Bayes-optimal adversary (Balunovic et al., "Bayesian Framework for Gradient Leakage",
ICLR 2022).

The defense is public, so the attacker knows p(g_obs | x): the distribution of the update it
observes given the client's data. It maximizes the posterior

    x* = argmax_x  log p(g_obs | g(x)) + log p(x)

with g(x) the update the client would send for x (gradient units; several local steps are
unrolled). The likelihood follows the defenses in `obs.protocol.defenses`, by name:

- gaussian (sigma):   -log p = ||g_obs - g(x)||^2 / (2 sigma^2)
- laplacian (scale):  -log p = ||g_obs - g(x)||_1 / b
- prune / topk:       the same, on the kept entries only (the mask is read off the observed
                      zeros: pruned entries carry no information about x)
- none of these:      Gaussian with sigma = `bayes.sigma` (exact matching in the limit)

Other known defenses with a registered `adapt` hook (clipping, ...) are applied to g(x)
first. The image prior is p(x) ∝ exp(-tv * TV(x)) on the valid box: TV is the anisotropic
total variation and iterates are projected (clipped) onto the pixel range after every step.
The likelihood is averaged over the observed entries, so `bayes.tv` transfers between model
sizes. Optimization follows the authors' code: Adam from a random image, lr 0.5 decayed by
0.94 per step, 200 steps.

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
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch

from fedattack.attacks.base import AttackContext, register_attack
from fedattack.attacks.common import num_images, total_variation
from fedattack.attacks.ggl import adapt_trial, model_parts, trial_gradient_fn
from fedattack.attacks.labels import recover_labels
from fedattack.config import check_choice, check_range
from fedattack.threat import Observation, Reconstruction, Truth

Params = dict[str, torch.Tensor]
LIKELIHOODS = ["auto", "gaussian", "laplacian", "l2", "cosine"]


@dataclass
class BayesParams:
    iterations: int = 200  # authors: 2 x 100 attack epochs
    lr: float = 0.5  # Adam step size (authors' CIFAR-10 setting)
    lr_decay: float = 0.94  # exponential decay of the step size per step
    tv: float = 1.0  # prior weight of total variation (tune it: tune_prior_weight)
    likelihood: str = "auto"  # auto (from the known defense) | gaussian | laplacian | l2 | cosine
    sigma: float = 1e-3  # noise scale assumed when no noise defense is known (auto)
    anneal: float = 1.0  # likelihood weight at the start, rising geometrically to 1 over the first half
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
    return "gaussian", params.sigma


def kept_entries(obs: Observation, target: Params) -> Params | None:
    """Pruning masks read off the observed zeros, when a sparsifying defense is known."""
    if not any(d.name in ("prune", "topk") for d in obs.protocol.defenses):
        return None
    return {k: (v != 0).to(v.dtype) for k, v in target.items()}


def neg_log_likelihood(trial: Params, target: Params, kind: str, scale: float,
                       mask: Params | None = None) -> torch.Tensor:
    """-log p(g_obs | g(x)) up to a constant, averaged over the (kept) entries."""
    names = list(target)
    if kind == "cosine":
        t = {k: trial[k] * mask[k] if mask else trial[k] for k in names}
        dot = sum((t[k] * target[k]).sum() for k in names)
        nt = torch.sqrt(sum((t[k] ** 2).sum() for k in names))
        no = torch.sqrt(sum((target[k] ** 2).sum() for k in names))
        return 1 - dot / (nt * no + 1e-12)
    count = sum((mask[k].sum() if mask else target[k].numel()) for k in names)
    total = torch.zeros((), device=target[names[0]].device)
    for k in names:
        diff = trial[k] - target[k]
        if mask:
            diff = diff * mask[k]
        if kind == "laplacian":
            total = total + diff.abs().sum() / scale
        elif kind == "gaussian":
            total = total + (diff**2).sum() / (2 * scale**2)
        else:  # l2
            total = total + (diff**2).sum()
    return total / max(float(count), 1.0)


def _attack(obs: Observation, params: BayesParams, ctx: AttackContext, labels: torch.Tensor) -> Reconstruction:
    module, mparams, buffers = model_parts(obs, ctx.device)
    trial_fn = trial_gradient_fn(obs, module, mparams, buffers)
    target = {k: v.detach().to(ctx.device) for k, v in obs.gradient_estimate().items()}
    kind, scale = _noise_model(obs, params)
    mask = kept_entries(obs, target)
    lo, hi = (b.to(ctx.device) for b in obs.data.bounds(ctx.device))
    n = labels.shape[0]
    best: tuple[float, torch.Tensor] | None = None
    for r in range(params.restarts):
        x = torch.randn((n, *obs.data.shape), generator=ctx.generator(r)).to(ctx.device)
        x = torch.max(torch.min(x, hi), lo).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=params.lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=params.lr_decay)

        def objective(fac: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
            trial = adapt_trial(trial_fn(x, labels), target, obs)
            nll = neg_log_likelihood(trial, target, kind, scale, mask)
            return fac * nll + params.tv * total_variation(x), nll

        ramp = max(1, params.iterations // 2)
        for it in range(params.iterations):
            opt.zero_grad(set_to_none=True)
            loss, _ = objective(params.anneal ** max(0.0, 1 - it / ramp))
            if not torch.isfinite(loss):
                break
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.copy_(torch.max(torch.min(x, hi), lo))
        with torch.no_grad():
            loss, nll = objective()
        value = float(loss)
        if math.isfinite(value) and (best is None or value < best[0]):
            best = (value, x.detach().clone())
    if best is None:
        raise FloatingPointError("every restart diverged")
    return Reconstruction(images=best[1], labels=labels,
                          info={"loss": best[0], "likelihood": kind, "noise_scale": scale, "tv": params.tv,
                                "masked": mask is not None, "iterations": params.iterations})


@register_attack("bayes", params=BayesParams,
                 paper="Balunovic et al., Bayesian Framework for Gradient Leakage, ICLR 2022")
def bayes(obs: Observation, params: BayesParams, ctx: AttackContext) -> Reconstruction:
    labels, method = recover_labels(obs, num_images(obs), ctx.labels)
    rec = _attack(obs, params, ctx, labels.to(ctx.device))
    rec.info["label_method"] = method
    return rec


# -- tuning the prior weight (the authors' procedure) -----------------------------------

def _mean_psnr(rec: Reconstruction, truth: Truth, obs: Observation) -> float:
    from fedattack.metrics import score

    return float(score(rec, truth, obs.data).psnr)


def tune_prior_weight(heldout: Sequence[tuple[Observation, Truth]], params: BayesParams,
                      ctx: AttackContext | None = None, start: float = 1e3, stop: float = 1e-4,
                      refine: int = 5, attack: Callable[..., Reconstruction] | None = None
                      ) -> tuple[float, list[tuple[float, float]]]:
    """Tune `tv` on held-out (observation, truth) pairs the attacker simulated itself.

    As in the authors' code: halve the weight from `start` down to `stop`, keep the weights
    whose mean PSNR is best (within 1e-3 dB), then scan `refine` weights between half and
    twice their mean. Returns (best weight, [(weight, mean PSNR), ...])."""
    ctx = ctx or AttackContext()
    attack = attack or (lambda o, p, c: bayes(o, p, c))
    tried: list[tuple[float, float]] = []

    def evaluate(w: float) -> float:
        p = replace(params, tv=w)
        value = sum(_mean_psnr(attack(o, p, ctx), t, o) for o, t in heldout) / max(1, len(heldout))
        tried.append((w, value))
        return value

    best_psnr, best_ws = -math.inf, [params.tv]
    w = start
    while w >= stop:
        value = evaluate(w)
        if abs(value - best_psnr) < 1e-3:
            best_ws.append(w)
        elif value > best_psnr:
            best_psnr, best_ws = value, [w]
        w /= 2
    center = sum(best_ws) / len(best_ws)
    best_w = center
    for i in range(refine):
        frac = i / max(1, refine - 1)
        w = center * (0.5 * (1 - frac) + 2.0 * frac)
        if any(abs(w - t) < 1e-12 * max(1.0, w) for t, _ in tried):
            continue
        value = evaluate(w)
        if value > best_psnr:
            best_psnr, best_w = value, w
    return best_w, tried
