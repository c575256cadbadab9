"""Shared pieces of the optimization attacks: the functional model, gradients of dummy
data, the simulated local training, matching losses and image priors.

Everything here is written with torch.func so that it composes: `gradient` and
`simulate_update` are differentiable in the dummy data (for the attack's outer
optimization) and vectorize with `torch.func.vmap`, which is how independent restarts
run as one batch dimension (`restart_losses`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fedattack.models import build_model
from fedattack.threat import Observation, Protocol

Params = dict[str, torch.Tensor]


@dataclass
class Victim:
    """The server's copy of the model, as a pure function of (params, x)."""

    module: torch.nn.Module
    params: Params  # global float parameters (detached)
    buffers: Params

    def logits(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, {**self.buffers, **params}, (x,))


def victim(obs: Observation, device: torch.device | None = None, train_mode: bool = True) -> Victim:
    """The observed model as a function.

    train_mode=True (default) computes as the client's local training does: BatchNorm
    normalizes with the batch's own statistics (and keeps no running statistics, so the
    function is pure and vectorizes over restarts); dropout stays off, since its masks are
    the client's private randomness. train_mode=False uses the sent running statistics.
    """
    device = device or next(iter(obs.global_params.values())).device
    module = build_model(obs.model).to(device)
    module.eval()
    if train_mode:
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()
        torch.func.replace_all_batch_norm_modules_(module)
    kept = dict(module.named_buffers())
    params = {k: v.detach().to(device) for k, v in obs.global_params.items()}
    buffers = {k: v.detach().to(device) for k, v in obs.buffers.items() if k in kept}
    return Victim(module, params, buffers)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with hard (N,) or soft/probability (N, C) targets, mean over the batch."""
    if y.dtype in (torch.long, torch.int64, torch.int32):
        return F.cross_entropy(logits, y)
    return torch.mean(torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1))


def gradient(v: Victim, params: Params, x: torch.Tensor, y: torch.Tensor, create_graph: bool = True) -> Params:
    """d loss(x, y) / d params; differentiable in x (and in soft labels y) unless
    create_graph=False, which returns detached tensors.

    Under a torch.func transform (vmap over restarts, func.grad) this is torch.func.grad;
    otherwise plain autograd, which builds the same graph with a little less dispatch overhead
    (a few percent of an evaluation on CPU for DLG's LeNet)."""
    if any(map(_transformed, (x, y, *params.values()))):
        g = grad(lambda p: ce_loss(v.logits(p, x), y))(params)
    else:
        with torch.enable_grad():
            leaves = {k: t if t.requires_grad else t.detach().requires_grad_(True) for k, t in params.items()}
            loss = ce_loss(v.logits(leaves, x), y)
            g = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph)))
    return g if create_graph else {k: t.detach() for k, t in g.items()}


def _transformed(t: torch.Tensor) -> bool:
    """Whether t is wrapped by a torch.func transform (vmap, grad, jvp)."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def schedule(n: int, batch_size: int, steps: int, epochs: int = 1) -> list[list[int]]:
    """Which of the n samples each local step uses, as the client's training draws them.

    Epoch mode (the client ran `epochs` passes over its n samples, `ceil(n / B)` steps
    each, the last one smaller) is recognized from the step count; otherwise the steps
    take B samples each in order, wrapping around (step mode). The client's shuffle is
    unknown and immaterial: dummy samples are interchangeable.
    """
    b = max(1, min(batch_size, n))
    per_epoch = -(-n // b)
    if n % b and steps == max(1, epochs) * per_epoch:
        return [list(range(i, min(i + b, n))) for _ in range(max(1, epochs)) for i in range(0, n, b)]
    return [[(s * b + j) % n for j in range(b)] for s in range(max(1, steps))]


def simulate_update(v: Victim, x: torch.Tensor, y: torch.Tensor, protocol: Protocol,
                    params: Params | None = None) -> Params:
    """The client's local SGD (with momentum, if configured) run on dummy data; new - global.

    Differentiable in (x, y) and vmappable over a leading restart dimension."""
    start = v.params if params is None else params
    p, buf = dict(start), None
    for idx in schedule(x.shape[0], protocol.batch_size, protocol.local_steps, protocol.local_epochs):
        g = gradient(v, p, x[idx], y[idx])
        if protocol.momentum:
            buf = g if buf is None else {k: protocol.momentum * buf[k] + g[k] for k in g}
            g = buf
        p = {k: p[k] - protocol.lr * g[k] for k in p}
    return {k: p[k] - start[k] for k in p}


def unrolled_update(v: Victim, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int, batch_size: int,
                    epochs: int = 1) -> Params:
    """`simulate_update` for a bare (lr, steps, batch_size, epochs) protocol."""
    protocol = Protocol(lr=lr, local_steps=steps, local_epochs=epochs, batch_size=batch_size,
                        num_examples=x.shape[0])
    return simulate_update(v, x, y, protocol)


def l2_distance(a: Params, b: Params) -> torch.Tensor:
    return sum(((a[k] - b[k]) ** 2).sum() for k in b)


def cosine_distance(a: Params, b: Params) -> torch.Tensor:
    """1 - cosine similarity of the two parameter-shaped vectors (Geiping et al.)."""
    dot = sum((a[k] * b[k]).sum() for k in b)
    na = torch.sqrt(sum((a[k] ** 2).sum() for k in b))
    nb = torch.sqrt(sum((b[k] ** 2).sum() for k in b))
    return 1 - dot / (na * nb + 1e-12)


DISTANCES: dict[str, Callable[[Params, Params], torch.Tensor]] = {"l2": l2_distance, "cosine": cosine_distance}


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV, mean absolute difference of neighbouring pixels (Geiping et al.)."""
    dx = torch.mean(torch.abs(x[..., :, :-1] - x[..., :, 1:]))
    dy = torch.mean(torch.abs(x[..., :-1, :] - x[..., 1:, :]))
    return dx + dy


def restart_losses(objective: Callable[..., torch.Tensor], *batched: torch.Tensor) -> torch.Tensor:
    """Evaluate `objective(*one_restart)` for every restart at once: inputs carry a leading
    restart dimension R, the result has shape (R,). Summing it and back-propagating gives
    each restart its own gradient, so elementwise optimizers (Adam, signed steps) run R
    independent attacks in one batch. A single restart is evaluated directly: vmap's
    batching rules cost about a quarter more per evaluation on CPU for nothing."""
    if batched[0].shape[0] == 1:
        return objective(*(b[0] for b in batched)).unsqueeze(0)
    return vmap(objective)(*batched)


def num_images(obs: Observation) -> int:
    """How many private samples the observed update covers (the client reports it)."""
    return max(1, obs.protocol.num_examples or obs.protocol.batch_size)

