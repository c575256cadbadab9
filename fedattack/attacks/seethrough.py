"""GradInversion (Yin et al., "See through Gradients: Image Batch Recovery via
GradInversion", CVPR 2021).

Labels first, from the last layer's gradient (Yin's rule: classes ranked by the minimum of
their weight-gradient row). Then a group of G dummy batches started from different seeds
is optimized together:

    min_x  grad * sum_l ||g_l(x) - g_obs,l||_2
         + bn * sum_l ||mu_l(x) - mean_l||_2 + ||var_l(x) - var_l||_2     (BatchNorm prior)
         + tv * TV(x) + l2 * ||x||^2                                     (image fidelity)
         + group * ||x - mean_g(x_g)||^2                                 (group consistency)

The BatchNorm prior matches the batch statistics of every BatchNorm layer's input to the
running statistics the server distributed (`obs.buffers`), as the paper does with a trained
model's. Where the client sent its own running statistics back (a Flower app's whole
state_dict), the prior takes the dummy images' statistics over the client's step batches,
weighted as the running statistics weigh them, and matches what those give away
(engine.RunningStatistics): on one local step, the client's own batch statistics. Group
consistency pulls every member toward the members' pixel-wise mean (registration-free: the
members are not aligned to each other first, unlike the paper's RANSAC-flow registration).
The output is the group mean. Adam with cosine step-size decay and a short warm-up; Langevin update noise on
the images, as in the paper. Models without BatchNorm run without the BN term.

The paper's weights are for ImageNet ResNet-50 at 224 px (20k steps; tv 1e-4, l2 1e-6,
bn 1e-2, group 1e-2, update noise 0.2); the defaults here are the same recipe rescaled
for 16-64 px images and a few thousand steps on CPU, and can be overridden in config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.func import vmap

from fedattack.attacks.base import AttackContext, LogRange, register_attack
from fedattack.attacks.engine import (FunctionalModel, Params, RunningStatistics, channel_statistics, num_images,
                                      recording_inputs, running_statistics, target, total_variation, trial_update)
from fedattack.attacks.labels import recover_labels
from fedattack.validate import check_choice, check_range
from fedattack.threat import Observation, Reconstruction



@dataclass
class SeeThroughParams:
    iterations: int = 2000  # paper: 20k
    lr: float = 0.1
    warmup: int = 50
    grad: float = 1.0  # weight of the gradient-matching term (sum over layers of L2 norms)
    bn: float = 1.0  # BatchNorm statistics prior
    tv: float = 0.01  # total variation (mean absolute differences)
    l2: float = 1e-6  # image norm
    group: float = 0.01  # pull toward the group mean
    group_size: int = 4  # seeds optimized together (G)
    noise: float = 0.2  # Langevin update noise, times the current step size
    output: str = "mean"  # mean (group consensus) | best (member with the lowest loss)

    def validate(self, name: str) -> None:
        check_range(name, "iterations", self.iterations, 1)
        check_range(name, "lr", self.lr, 0, lo_open=True)
        check_range(name, "warmup", self.warmup, 0)
        for key in ("grad", "bn", "tv", "l2", "group", "noise"):
            check_range(name, key, getattr(self, key), 0)
        check_range(name, "group_size", self.group_size, 1)
        check_choice(name, "output", self.output, ["mean", "best"])


# -- labels -------------------------------------------------------------------------

def labels_for(obs: Observation, n: int, method: str) -> tuple[torch.Tensor, str]:
    """Yin et al.'s rule (fedattack.attacks.labels' `yin`) unless audit.labels names another method."""
    return recover_labels(obs, n, "yin" if method == "auto" else method)


# -- BatchNorm statistics -------------------------------------------------------------

def bn_targets(obs: Observation, model: FunctionalModel
               ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], RunningStatistics | None]:
    """BatchNorm layer name -> (mean, var): the average of the client's batch statistics where it
    returned its running statistics (with the RunningStatistics term that averages the trial's
    alike), the running statistics the server sent elsewhere (and None)."""
    stats = running_statistics(obs, model)
    if stats is not None:
        return dict(stats.targets), stats
    out = {}
    for name, m in model.module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            mean, var = obs.buffers.get(f"{name}.running_mean"), obs.buffers.get(f"{name}.running_var")
            if mean is not None and var is not None:
                out[name] = (mean.detach().clone().float(), var.detach().clone().float())
    return out, None


def batch_statistics(model: FunctionalModel, x: torch.Tensor, names: list[str], stats: RunningStatistics | None
                     ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each BatchNorm layer's (mean, var) of the images x: over the client's step batches, weighted
    as its running statistics weigh them, where it returned those (`stats`); over all of x
    elsewhere, with the batch's own (biased) variance, as BatchNorm normalizes."""
    if stats is not None:
        return stats.predicted(x)
    with recording_inputs(model.module, names) as record:
        model.logits(model.params, x)
    return {name: channel_statistics(record[name], unbiased=False) for name in names}


def bn_loss(found: dict[str, tuple[torch.Tensor, torch.Tensor]],
            targets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    total = 0.0
    for name, (mean, var) in targets.items():
        mu, v = found[name]
        total = total + torch.norm(mu - mean.to(mu.device), 2) + torch.norm(v - var.to(v.device), 2)
    return total


# -- the attack ----------------------------------------------------------------------

def _step_size(params: SeeThroughParams, it: int) -> float:
    if it < params.warmup:
        return params.lr * (it + 1) / params.warmup
    span = max(1, params.iterations - params.warmup)
    return params.lr * 0.5 * (1 + math.cos(math.pi * (it - params.warmup) / span))


@register_attack("seethrough", params=SeeThroughParams,
                 tunable={"tv": LogRange(1e-4, 1.0), "bn": LogRange(1e-2, 10.0)},
                 paper="Yin et al., See through Gradients: Image Batch Recovery via GradInversion, CVPR 2021")
def seethrough(obs: Observation, params: SeeThroughParams, ctx: AttackContext) -> Reconstruction:
    device = ctx.device
    n = num_images(obs)
    labels, method = labels_for(obs, n, ctx.labels)
    labels = labels.to(device)
    trial_fn = trial_update(obs, device, adaptive=True)  # the known defenses, modelled
    fm = trial_fn.model
    observed = target(obs, device)
    targets, stats = bn_targets(obs, fm) if params.bn > 0 else ({}, None)
    lo, hi = (b.to(device) for b in obs.data.bounds(device))
    gen = ctx.generator()
    G = params.group_size
    x = torch.randn((G, n, *obs.data.shape), generator=gen).to(device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=params.lr)

    def member(xg: torch.Tensor) -> tuple[Params, torch.Tensor]:
        """One group member's simulated update and BatchNorm prior (vmapped over the group)."""
        trial = trial_fn(xg, labels)
        if not targets:
            return trial, xg.new_zeros(())
        return trial, bn_loss(batch_statistics(fm, xg, list(targets), stats), targets)

    members = vmap(member)

    def member_losses(x: torch.Tensor, with_group: bool) -> torch.Tensor:
        trial, prior = members(x)
        match = sum(torch.linalg.vector_norm((trial[k] - observed[k]).flatten(1), dim=1) for k in observed)
        tv = torch.stack([total_variation(x[g]) for g in range(G)])
        loss = params.grad * match + params.bn * prior + params.tv * tv + params.l2 * (x**2).flatten(1).sum(1)
        if with_group and G > 1:
            loss = loss + params.group * ((x - x.detach().mean(0)) ** 2).flatten(1).sum(1)
        return loss

    for it in range(params.iterations):
        lr = _step_size(params, it)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        losses = member_losses(x, with_group=True)
        if not torch.isfinite(losses).all():
            raise FloatingPointError("the reconstruction diverged")
        losses.sum().backward(inputs=[x])
        opt.step()
        with torch.no_grad():
            if params.noise > 0 and it < params.iterations - 1:
                x.add_(torch.randn(x.shape, generator=gen).to(device), alpha=params.noise * lr)
            x.copy_(torch.max(torch.min(x, hi), lo))
    with torch.no_grad():
        final = member_losses(x, with_group=False)
    if params.output == "best":
        images = x.detach()[int(torch.argmin(final))]
    else:
        images = x.detach().mean(0)
    return Reconstruction(images=images, labels=labels,
                          info={"loss": float(final.min()), "label_method": method, "bn_layers": len(targets),
                                "group_size": G, "iterations": params.iterations})
