"""An attack of your own: one function of what the server observes, registered by name.

Given by import path (audit.attacks=[mypkg.attacks:mine]), it registers itself as `mine` when
fedattack imports it, so its parameters are the config section `mine` (mine.iterations=5).
`matched` is the same on fedattack's trial-update engine, with hyperparameters calibration tunes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedattack.attacks import register_attack
from fedattack.attacks.base import LogRange
from fedattack.attacks.engine import matching, num_images
from fedattack.attacks.labels import recover_labels
from fedattack.errors import AttackFailure
from fedattack.threat import Observation, Reconstruction
from fedattack.validate import check_range


@dataclass
class MyParams:
    iterations: int = 100

    def validate(self, name: str) -> None:
        check_range(name, "iterations", self.iterations, 1)


@register_attack("mine", params=MyParams, paper="Me et al., 2026")
def mine(obs: Observation, params: MyParams, ctx) -> Reconstruction:
    """Labels from the last layer's bias gradient (iDLG's observation), images by gradient
    matching on the last layer alone: for a linear head, the weight gradient is the outer
    product of the output error and the input features."""
    grad = obs.gradient_estimate()  # -update / (lr * steps)
    bias = [k for k in grad if k.endswith("bias")]
    if not bias:
        raise AttackFailure("the model has no bias in its last layer to read labels from")
    g = grad[bias[-1]]
    n = max(1, obs.protocol.num_examples)
    labels = torch.argsort(g)[: min(n, g.numel())]  # most negative entries: the classes trained on
    x = torch.zeros(len(labels), *obs.data.shape, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1)
    target = obs.data.normalize(torch.full_like(x, 0.5)).detach()
    for _ in range(params.iterations):  # a stand-in for your own objective
        opt.zero_grad()
        loss = ((x - target) ** 2).mean()
        loss.backward()
        opt.step()
    return Reconstruction(images=x.detach(), labels=labels)


@dataclass
class MatchedParams:
    iterations: int = 200
    lr: float = 0.1
    tv: float = 1e-2  # weight of the total-variation prior

    def validate(self, name: str) -> None:
        check_range(name, "iterations", self.iterations, 1)
        check_range(name, "lr", self.lr, 0, lo_open=True)
        check_range(name, "tv", self.tv, 0)


@register_attack("matched", params=MatchedParams, paper="Me et al., 2026",
                 tunable={"tv": LogRange(1e-4, 1.0), "lr": LogRange(0.01, 1.0)})
def matched(obs: Observation, params: MatchedParams, ctx) -> Reconstruction:
    """Gradient matching on fedattack's trial-update engine: `matching` replays the client's
    protocol (its steps or epochs, batches, optimizer) on dummy images and compares the result
    with the observed update. `tunable` lets `audit.calibrate=true` tune tv and lr."""
    problem = matching(obs, ctx.device, "cosine", {"tv": params.tv}, adaptive=ctx.adaptive)
    labels, _method = recover_labels(obs, num_images(obs), ctx.labels)  # (labels, the method used)
    gen = torch.Generator().manual_seed(ctx.seed)
    x = torch.randn(len(labels), *obs.data.shape, generator=gen).to(ctx.device).requires_grad_(True)
    lo, hi = obs.data.bounds(ctx.device)
    opt = torch.optim.Adam([x], lr=params.lr)
    for _ in range(params.iterations):
        opt.zero_grad()
        problem.objective(x, labels.to(ctx.device)).backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(min=lo, max=hi)  # valid pixels
    return Reconstruction(images=x.detach(), labels=labels, info={"mismatch": float(problem.mismatch(x, labels))})
