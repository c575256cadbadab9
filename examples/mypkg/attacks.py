"""An attack of your own: one function of what the server observes, registered by name.

Given by import path (audit.attacks=[mypkg.attacks:mine]), it registers itself as `mine` when
fedattack imports it, so its parameters are the config section `mine` (mine.iterations=5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedattack.attacks import register_attack
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
