"""Shared pieces of the optimization attacks: the functional model, gradients of dummy
data, the unrolled local-training simulation, matching losses and image priors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

from fedattack.threat import Observation

Params = dict[str, torch.Tensor]


@dataclass
class Victim:
    """The server's copy of the model, as a pure function of (params, x)."""

    module: torch.nn.Module
    params: Params  # global float parameters (detached)
    buffers: Params

    def logits(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, {**self.buffers, **params}, (x,))


def victim(obs: Observation, device: torch.device | None = None, train_mode: bool = False) -> Victim:
    device = device or next(iter(obs.global_params.values())).device
    module = obs.model.build().to(device)
    module.train(train_mode)
    params = {k: v.detach().to(device) for k, v in obs.global_params.items()}
    buffers = {k: v.detach().to(device) for k, v in obs.buffers.items()}
    return Victim(module, params, buffers)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with hard (N,) or soft/probability (N, C) targets, mean over the batch."""
    if y.dtype in (torch.long, torch.int64, torch.int32):
        return F.cross_entropy(logits, y)
    return torch.mean(torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1))


def gradient(v: Victim, params: Params, x: torch.Tensor, y: torch.Tensor, create_graph: bool = True) -> Params:
    loss = ce_loss(v.logits(params, x), y)
    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], create_graph=create_graph)
    return dict(zip(names, grads))


def unrolled_update(v: Victim, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int, batch_size: int,
                    epochs: int = 1) -> Params:
    """Simulate the client's local SGD on dummy data (differentiably); return new - global.

    Samples are consumed in order, `batch_size` per step, wrapping around, as the client's
    step-mode schedule does; for several epochs the same order repeats.
    """
    params = {k: p.detach().requires_grad_(True) for k, p in v.params.items()}
    start = dict(params)
    n = x.shape[0]
    total = steps * max(1, epochs)
    for s in range(total):
        idx = [(s * batch_size + j) % n for j in range(min(batch_size, n))]
        g = gradient(v, params, x[idx], y[idx], create_graph=True)
        params = {k: params[k] - lr * g[k] for k in params}
    return {k: params[k] - start[k] for k in params}


def l2_distance(a: Params, b: Params) -> torch.Tensor:
    return sum(((a[k] - b[k]) ** 2).sum() for k in b)


def cosine_distance(a: Params, b: Params) -> torch.Tensor:
    dot = sum((a[k] * b[k]).sum() for k in b)
    na = torch.sqrt(sum((a[k] ** 2).sum() for k in b))
    nb = torch.sqrt(sum((b[k] ** 2).sum() for k in b))
    return 1 - dot / (na * nb + 1e-12)


DISTANCES: dict[str, Callable[[Params, Params], torch.Tensor]] = {"l2": l2_distance, "cosine": cosine_distance}


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV, mean absolute difference of neighbouring pixels (Geiping et al.)."""
    dx = torch.mean(torch.abs(x[:, :, :, :-1] - x[:, :, :, 1:]))
    dy = torch.mean(torch.abs(x[:, :, :-1, :] - x[:, :, 1:, :]))
    return dx + dy


def num_images(obs: Observation) -> int:
    """How many private samples the observed update covers (the client reports it)."""
    return max(1, obs.protocol.num_examples or obs.protocol.batch_size)
