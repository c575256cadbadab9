"""The trial-update engine: what the client would have sent, for dummy data.

Every optimization attack (dlg, idlg, invgrad, fedavg, cpl, ggl, bayes, grnn, seethrough) is
a distance and a prior on top of one object, `TrialUpdate`, in the spirit of breaching's
single gradient-loss object:

- the server's copy of the model as a pure function of its parameters (`FunctionalModel`,
  torch.func): BatchNorm normalizes with the batch's own statistics as in the client's
  training, dropout is off (its masks are the client's private randomness);
- the client's protocol replayed on dummy images and labels (`replay`): one gradient step,
  several steps, or whole epochs of batches, with the client's optimizer (SGD with momentum,
  Nesterov and weight decay, or Adam), optionally with one copy of the dummy data per epoch
  (the FedAvg attack of Dimitrov et al., where each epoch's batch order is unknown);
- with `adaptive`, the known defenses' differentiable models applied to the replayed update;
- the result in gradient units, -update / (lr * steps), the scale at which the papers state
  their losses;
- where the client sent its BatchNorm running statistics back with its weights, the batch
  statistics they average (`RunningStatistics`), a second observed quantity to match.

`Matching` combines a TrialUpdate with the observed update, a distance (`DISTANCES`) and
weighted priors (`PRIORS`). Everything is differentiable in the dummy data and vectorizes
with torch.func.vmap, which is how restarts and label candidates run as one batch dimension
(`restart_losses`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fedattack.attacks.pooling import SoftMaxPool2d, soften_max_pools
from fedattack.defenses.base import DEFENSES, adapt_update
from fedattack.errors import ConfigError
from fedattack.models import build_model
from fedattack.threat import DataSpec, Observation, Protocol

Params = dict[str, torch.Tensor]


# -- the model as a function ----------------------------------------------------------------

@dataclass(repr=False)  # reprs would print every tensor (vmap asks for one on every call)
class FunctionalModel:
    """The server's copy of the model, as a pure function of (params, x)."""

    module: torch.nn.Module
    params: Params  # the global float parameters (detached)
    buffers: Params
    pools: tuple[SoftMaxPool2d, ...] = ()  # the module's max-pools, softened by `soften` (pooling.py)

    def logits(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, {**self.buffers, **params}, (x,))

    def soften(self, temperature: float) -> None:
        """Set the temperature of every softened max-pool (0: the model as the client trains it)."""
        for pool in self.pools:
            pool.temperature = float(temperature)


def functional_model(obs: Observation, device: torch.device | None = None, train_mode: bool = True
                     ) -> FunctionalModel:
    """The observed model as a function.

    train_mode=True (default) computes as the client's local training does: BatchNorm
    normalizes with the batch's own statistics (and keeps no running statistics, so the
    function is pure and vectorizes); dropout stays off, since its masks are the client's
    private randomness. train_mode=False uses the running statistics the server sent. Tiling
    max-pools are swapped for `pooling.SoftMaxPool2d` at temperature 0 (the same function), for
    attacks that anneal them (`soften`)."""
    device = device or next(iter(obs.global_params.values())).device
    module = build_model(obs.model).to(device)
    pools = soften_max_pools(module)
    module.eval()
    if train_mode:
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()
        torch.func.replace_all_batch_norm_modules_(module)
    kept = dict(module.named_buffers())
    params = {k: v.detach().to(device) for k, v in obs.global_params.items()}
    buffers = {k: v.detach().to(device) for k, v in obs.buffers.items() if k in kept}
    return FunctionalModel(module, params, buffers, pools)


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with hard (N,) or soft/probability (N, C) targets, mean over the batch."""
    if y.dtype in (torch.long, torch.int64, torch.int32):
        return F.cross_entropy(logits, y)
    return torch.mean(torch.sum(-y * F.log_softmax(logits, dim=-1), dim=-1))


def gradient(model: FunctionalModel, params: Params, x: torch.Tensor, y: torch.Tensor,
             create_graph: bool = True) -> Params:
    """d loss(x, y) / d params; differentiable in x (and in soft labels y) unless
    create_graph=False, which returns detached tensors.

    Under a torch.func transform (vmap over restarts, func.grad) this is torch.func.grad;
    otherwise plain autograd, which builds the same graph with less dispatch overhead."""
    if any(map(_transformed, (x, y, *params.values()))):
        g = grad(lambda p: ce_loss(model.logits(p, x), y))(params)
    else:
        with torch.enable_grad():
            leaves = {k: t if t.requires_grad else t.detach().requires_grad_(True) for k, t in params.items()}
            loss = ce_loss(model.logits(leaves, x), y)
            g = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph)))
    return g if create_graph else {k: t.detach() for k, t in g.items()}


def _transformed(t: torch.Tensor) -> bool:
    """Whether t is wrapped by a torch.func transform (vmap, grad, jvp)."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


# -- the client's protocol --------------------------------------------------------------

def schedule(n: int, batch_size: int, steps: int, epochs: int = 1) -> list[list[int]]:
    """Which of the n samples each local step uses, as the client's training draws them.

    Epoch mode (the client ran `epochs` passes over its n samples, `ceil(n / B)` steps
    each, the last one smaller) is recognized from the step count; otherwise the steps
    take B samples each in order, wrapping around (step mode). The client's shuffle is
    unknown and immaterial within one epoch: dummy samples are interchangeable.
    """
    b = max(1, min(batch_size, n))
    per_epoch = -(-n // b)
    if steps == max(1, epochs) * per_epoch:
        return [list(range(i, min(i + b, n))) for _ in range(max(1, epochs)) for i in range(0, n, b)]
    return [[(s * b + j) % n for j in range(b)] for s in range(max(1, steps))]


def epoch_of_step(n: int, protocol: Protocol) -> list[int]:
    """The epoch each local step belongs to (all 0 in step mode)."""
    steps = schedule(n, protocol.batch_size, protocol.local_steps, protocol.local_epochs)
    per_epoch = -(-n // max(1, min(protocol.batch_size, n)))
    if len(steps) == max(1, protocol.local_epochs) * per_epoch:
        return [s // per_epoch for s in range(len(steps))]
    return [0] * len(steps)


@dataclass(frozen=True)
class ClientOptimizer:
    """One local optimizer the engine replays, as torch.optim defines it."""

    name: str
    init: Callable[[Params], dict]
    step: Callable[[Params, Params, dict, Protocol, int], tuple[Params, dict]]


def _sgd_init(params: Params) -> dict:
    return {"buf": None}


def _sgd_step(p: Params, g: Params, state: dict, protocol: Protocol, t: int) -> tuple[Params, dict]:
    """torch.optim.SGD: weight decay, momentum (dampening 0), Nesterov."""
    if protocol.weight_decay:
        g = {k: g[k] + protocol.weight_decay * p[k] for k in g}
    if protocol.momentum:
        buf = g if state["buf"] is None else {k: protocol.momentum * state["buf"][k] + g[k] for k in g}
        state = {"buf": buf}
        g = {k: g[k] + protocol.momentum * buf[k] for k in g} if protocol.nesterov else buf
    return {k: p[k] - protocol.lr * g[k] for k in p}, state


def _adam_init(params: Params) -> dict:
    return {"m": {k: torch.zeros_like(v) for k, v in params.items()},
            "v": {k: torch.zeros_like(v) for k, v in params.items()}}


ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def _adam_step(p: Params, g: Params, state: dict, protocol: Protocol, t: int) -> tuple[Params, dict]:
    """torch.optim.Adam at its default betas and eps (L2 weight decay as torch adds it)."""
    b1, b2 = ADAM_BETAS
    if protocol.weight_decay:
        g = {k: g[k] + protocol.weight_decay * p[k] for k in g}
    m = {k: b1 * state["m"][k] + (1 - b1) * g[k] for k in g}
    v = {k: b2 * state["v"][k] + (1 - b2) * g[k] ** 2 for k in g}
    c1, c2 = 1 - b1 ** t, 1 - b2 ** t
    new = {k: p[k] - protocol.lr * (m[k] / c1) / (torch.sqrt(v[k] / c2 + 1e-30) + ADAM_EPS) for k in p}
    return new, {"m": m, "v": v}


CLIENT_OPTIMIZERS: dict[str, ClientOptimizer] = {
    "sgd": ClientOptimizer("sgd", _sgd_init, _sgd_step),
    "adam": ClientOptimizer("adam", _adam_init, _adam_step),
}


def step_batches(x: torch.Tensor, protocol: Protocol) -> list[tuple[int, list[int]]]:
    """(epoch copy, sample positions) of each local step the client takes on x: (n, C, H, W),
    or (E, n, C, H, W) with one copy of the samples per epoch (copy 0 throughout for the former)."""
    apart = x.dim() == 5
    n = x.shape[1] if apart else x.shape[0]
    steps = schedule(n, protocol.batch_size, protocol.local_steps, protocol.local_epochs)
    epochs = epoch_of_step(n, protocol) if apart else [0] * len(steps)
    return list(zip(epochs, steps))


def replay(model: FunctionalModel, x: torch.Tensor, y: torch.Tensor, protocol: Protocol,
           params: Params | None = None, on_step: Callable[[Params, torch.Tensor], None] | None = None) -> Params:
    """The client's local training run on dummy data (x, y); returns new - start parameters.

    x is (n, C, H, W) with labels y (n,) or (n, classes), every epoch drawing its batches
    from the same samples; or (E, n, C, H, W) with y (E, n[, classes]): one copy of the
    samples per epoch (the FedAvg attack's per-epoch reconstructions). Differentiable in
    (x, y) and vmappable over a leading restart dimension. `on_step(params, batch)` sees
    each step's parameters and images before the step (`RunningStatsRecorder`)."""
    start = model.params if params is None else params
    apart = x.dim() == 5
    opt = CLIENT_OPTIMIZERS[protocol.optimizer]
    p, state = dict(start), opt.init(start)
    for t, (e, idx) in enumerate(step_batches(x, protocol), start=1):
        xb, yb = (x[e], y[e]) if apart else (x, y)
        if on_step is not None:
            on_step(p, xb[idx])
        g = gradient(model, p, xb[idx], yb[idx])
        if protocol.proximal_mu:  # FedProx's proximal term, differentiated as the client's loss has it
            g = {k: g[k] + protocol.proximal_mu * (p[k] - start[k]) for k in g}
        p, state = opt.step(p, g, state, protocol, t)
    return {k: p[k] - start[k] for k in p}


def update_scale(protocol: Protocol) -> float:
    """Update units per gradient unit: lr * steps (-update / scale reads as one gradient)."""
    return protocol.lr * max(1, protocol.local_steps)


# -- BatchNorm's running statistics ---------------------------------------------------------

def tracked_batch_norms(module: torch.nn.Module) -> dict[str, float]:
    """BatchNorm layer name -> its momentum, for the layers whose running statistics are an
    exponential moving average (momentum None, a cumulative average, is left out)."""
    return {name: float(m.momentum) for name, m in module.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.momentum is not None}


@contextmanager
def recording_inputs(module: torch.nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """The input of each named submodule in the forward passes run inside the block."""
    record: dict[str, torch.Tensor] = {}
    modules = dict(module.named_modules())
    handles = [modules[name].register_forward_hook(lambda m, inp, out, name=name: record.__setitem__(name, inp[0]))
               for name in names]
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


def channel_statistics(a: torch.Tensor, unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance of a BatchNorm input (N, C, ...): unbiased, as the layer
    folds them into its running statistics, or biased, as it normalizes the batch."""
    dims = [0, *range(2, a.dim())]
    return a.mean(dims), a.var(dims, unbiased=unbiased)


class RunningStatsRecorder:
    """BatchNorm's running statistics as a replayed local training leaves them (`replay`'s
    `on_step`): a simulated client's returned buffers, as PyTorch updates them in training."""

    def __init__(self, model: FunctionalModel, buffers: Params):
        self.model = model
        self.momenta = {k: m for k, m in tracked_batch_norms(model.module).items()
                        if f"{k}.running_mean" in buffers and f"{k}.running_var" in buffers}
        self.buffers = {k: v.detach().clone() for k, v in buffers.items()}

    def __call__(self, params: Params, x: torch.Tensor) -> None:
        if not self.momenta:  # no BatchNorm whose statistics were sent: nothing to fold
            return
        with torch.no_grad(), recording_inputs(self.model.module, list(self.momenta)) as record:
            self.model.logits(params, x)
        for name, m in self.momenta.items():
            mean, var = channel_statistics(record[name])
            for key, stat in ((f"{name}.running_mean", mean), (f"{name}.running_var", var)):
                self.buffers[key] = (1 - m) * self.buffers[key] + m * stat.detach()
            count = f"{name}.num_batches_tracked"
            if count in self.buffers:
                self.buffers[count] = self.buffers[count] + 1


@dataclass(repr=False)  # reprs would print every tensor (vmap asks for one on every call)
class RunningStatistics:
    """What the client's returned BatchNorm buffers give away, as a term matched beside the update.

    A client that trains in train mode folds each step's batch statistics into every BatchNorm
    layer's running mean and variance, `r <- (1 - m) r + m s`; a Flower app sends its whole
    state_dict, so the server holds the running statistics before and after the local training,
    and `(r_T - (1 - m)^T r_0) / (1 - (1 - m)^T)` is an average of the T steps' batch
    statistics, step t weighted by `m (1 - m)^(T - t)`. That fixes each channel's mean and
    variance over the client's batches: at the first layer the images' colour and contrast, which
    BatchNorm hides from the update itself. The trial's statistics are taken at the global
    weights for every step (the client's take them at the weights of that step, which move by a
    few learning-rate steps), with the same batches as the replay. The error is each channel's
    mean difference in units of its standard deviation, squared, plus the squared log ratio of
    the variances, averaged over channels and layers.
    """

    model: FunctionalModel
    protocol: Protocol
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer -> the weighted average (mean, var)
    momenta: dict[str, float]

    def predicted(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        steps = step_batches(x, self.protocol)
        sums: dict[str, list] = {}
        for t, (e, idx) in enumerate(steps):
            xb = (x[e] if x.dim() == 5 else x)[idx]
            with recording_inputs(self.model.module, list(self.targets)) as record:
                self.model.logits(self.model.params, xb)
            for name, m in self.momenta.items():
                w = m * (1 - m) ** (len(steps) - 1 - t) / (1 - (1 - m) ** len(steps))
                mean, var = channel_statistics(record[name])
                acc = sums.setdefault(name, [0.0, 0.0])
                acc[0], acc[1] = acc[0] + w * mean, acc[1] + w * var
        return {name: (a[0], a[1]) for name, a in sums.items()}

    def __call__(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        total = x.new_zeros(())
        for name, (mean, var) in self.predicted(x).items():
            t_mean, t_var = self.targets[name]
            t_var = t_var.clamp(min=1e-8)
            total = total + torch.mean((mean - t_mean) ** 2 / t_var
                                       + (torch.log(var.clamp(min=1e-8)) - torch.log(t_var)) ** 2)
        return total / max(1, len(self.targets))


def running_statistics(obs: Observation, model: FunctionalModel) -> RunningStatistics | None:
    """The RunningStatistics term of an observation whose client returned the running statistics
    of BatchNorm layers, or None (no BatchNorm, buffers not returned, or not moved by training)."""
    n = num_images(obs)
    steps = len(schedule(n, obs.protocol.batch_size, obs.protocol.local_steps, obs.protocol.local_epochs))
    targets, momenta = {}, {}
    for name, m in tracked_batch_norms(model.module).items():
        keys = (f"{name}.running_mean", f"{name}.running_var")
        if not all(k in obs.buffers and k in obs.returned_buffers for k in keys):
            continue
        decay = (1 - m) ** steps
        (r0m, r0v), (rtm, rtv) = ([src[k].detach().float().to(model_device(model)) for k in keys]
                                  for src in (obs.buffers, obs.returned_buffers))
        if torch.equal(r0m, rtm) and torch.equal(r0v, rtv):
            continue
        targets[name] = ((rtm - decay * r0m) / (1 - decay), (rtv - decay * r0v) / (1 - decay))
        momenta[name] = m
    return RunningStatistics(model, obs.protocol, targets, momenta) if targets else None


def model_device(model: FunctionalModel) -> torch.device:
    return next(iter(model.params.values())).device


def batch_norm_colour(stats: RunningStatistics, data: DataSpec) -> torch.Tensor | None:
    """The client's mean colour (C,) in model-input units, from the running mean of the first
    BatchNorm layer: its input's channel means are affine in a flat image's colour where only
    affine layers (a convolution) come before it, so the colour is the least-squares solution of
    the leaked means (clamped to the pixel range); None where that layer's means do not move
    with the colour."""
    first = next(iter(stats.targets))
    c = data.shape[0]
    flats = torch.zeros((c + 1, *data.shape), device=model_device(stats.model))
    for i in range(c):
        flats[i + 1, i] = 1.0
    with torch.no_grad(), recording_inputs(stats.model.module, [first]) as record:
        stats.model.logits(stats.model.params, flats)
    means = record[first].mean(dim=(2, 3)) if record[first].dim() == 4 else record[first]
    a = (means[1:] - means[:1]).T.double()  # (channels, C)
    b = (stats.targets[first][0] - means[0]).double()
    if torch.linalg.matrix_rank(a) < c:
        return None
    colour = torch.linalg.lstsq(a, b[:, None]).solution[:, 0].float()
    lo, hi = (t.flatten().to(colour.device) for t in data.bounds())
    return torch.max(torch.min(colour, hi), lo).cpu()


# -- the trial update -------------------------------------------------------------------------

@dataclass(repr=False)  # reprs would print every tensor (vmap asks for one on every call)
class TrialUpdate:
    """What the client would have sent for (x, y), in gradient units: the replayed local
    training, with the known defenses' `adapt` models applied when `defenses` is set."""

    model: FunctionalModel
    protocol: Protocol
    defenses: tuple = ()  # DefenseSettings to model (adaptive attacks); () for none
    observed_update: Params = field(default_factory=dict)  # what the defenses' masks are read off

    def __post_init__(self) -> None:
        self.scale = update_scale(self.protocol)

    def one_gradient(self, n: int) -> bool:
        """Whether the protocol is one SGD step over all n samples (the update is a gradient)."""
        p = self.protocol
        return (not self.defenses and p.optimizer == "sgd" and not p.weight_decay
                and schedule(n, p.batch_size, p.local_steps, p.local_epochs) == [list(range(n))])

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Params:
        if x.dim() == 4 and self.one_gradient(x.shape[0]):
            return gradient(self.model, self.model.params, x, y)
        upd = replay(self.model, x, y, self.protocol)
        if self.defenses:
            upd = adapt_update(upd, self.observed_update, self.defenses, scale=self.scale)
        return {k: u * (-1.0 / self.scale) for k, u in upd.items()}


def modelled_defenses(obs: Observation) -> tuple:
    """The protocol's defenses that have a differentiable model (`adapt`); the others (noise
    among them, and defenses this installation does not know) act on the update as
    identities for an attacker's trial."""
    return tuple(d for d in obs.protocol.defenses if (spec := DEFENSES.find(d.name)) is not None
                 and spec.adapt is not None)


def trial_update(obs: Observation, device: torch.device | None = None, adaptive: bool = False,
                 train_mode: bool = True) -> TrialUpdate:
    """The TrialUpdate of an observation: its model, its protocol and, when adaptive, the
    differentiable models of the defenses the protocol declares."""
    return TrialUpdate(model=functional_model(obs, device, train_mode), protocol=obs.protocol,
                       defenses=modelled_defenses(obs) if adaptive else (),
                       observed_update={k: u.detach().to(device or u.device) for k, u in obs.update.items()})


def target(obs: Observation, device: torch.device | None = None) -> Params:
    """The observed update in gradient units, -update / (lr * steps)."""
    return {k: g.detach().to(device or g.device) for k, g in obs.gradient_estimate().items()}


# -- distances ------------------------------------------------------------------------------

def flattened(p: Params, keys) -> torch.Tensor:
    """The tensors of `p` named by `keys`, as one vector: a distance over it takes a few kernels
    (and as few backward nodes) where one per tensor took several, which on CPU is most of a
    distance's cost."""
    return torch.cat([p[k].reshape(-1) for k in keys])


def l2_distance(a: Params, b: Params) -> torch.Tensor:
    """Squared L2 over all entries (DLG)."""
    return torch.sum((flattened(a, b) - flattened(b, b)) ** 2)


def l1_distance(a: Params, b: Params) -> torch.Tensor:
    return torch.sum(torch.abs(flattened(a, b) - flattened(b, b)))


def cosine_distance(a: Params, b: Params) -> torch.Tensor:
    """1 - cosine similarity of the two parameter-shaped vectors (Geiping et al.)."""
    fa, fb = flattened(a, b), flattened(b, b)
    return 1 - torch.dot(fa, fb) / (torch.linalg.vector_norm(fa) * torch.linalg.vector_norm(fb) + 1e-12)


def layer_cosine_distance(a: Params, b: Params) -> torch.Tensor:
    """Mean over parameter tensors of 1 - their cosine similarity: every layer counts the
    same, whatever the scale of its gradient. A global cosine is carried by the layers with
    the largest gradients, often the classifier, whose direction the labels alone nearly fix
    (with sigmoid features, a flat grey batch matches it to 1e-5), and barely sees the first
    layer's, which holds the pixels. Tensors whose observed gradient is numerically zero
    (the bias of a convolution followed by BatchNorm: 1e-8 of the others) carry no signal and
    are left out."""
    nb = torch.stack([torch.linalg.vector_norm(b[k]) for k in b])
    na = torch.stack([torch.linalg.vector_norm(a[k]) for k in b])
    dots = torch.stack([torch.sum(a[k] * b[k]) for k in b])
    kept = (nb > 1e-6 * nb.max()).to(dots.dtype)  # tensor ops only: no host sync per evaluation on a GPU
    return torch.sum(kept * (1 - dots / (na * nb + 1e-12))) / kept.sum().clamp(min=1)


DISTANCES: dict[str, Callable[[Params, Params], torch.Tensor]] = {
    "l2": l2_distance, "l1": l1_distance, "cosine": cosine_distance, "layer-cosine": layer_cosine_distance,
}


# -- priors -----------------------------------------------------------------------------------

def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic TV, mean absolute difference of neighbouring pixels (Geiping et al.)."""
    dx = torch.mean(torch.abs(x[..., :, :-1] - x[..., :, 1:]))
    dy = torch.mean(torch.abs(x[..., :-1, :] - x[..., 1:, :]))
    return dx + dy


def squared_norm(x: torch.Tensor) -> torch.Tensor:
    """Mean squared value (in model-input units: a pull toward the dataset mean)."""
    return torch.mean(x ** 2)


def epoch_invariance(x: torch.Tensor) -> torch.Tensor:
    """Dimitrov et al.'s epoch-order-invariant prior on per-epoch copies x (E, n, C, H, W):
    every epoch trains on the same set of samples, so a permutation-invariant summary of each
    copy (the mean image) must agree across epochs; mean squared difference over epoch pairs."""
    if x.dim() != 5 or x.shape[0] < 2:
        return x.new_zeros(())
    means = x.mean(1)  # (E, C, H, W)
    return torch.mean((means[:, None] - means[None, :]) ** 2) * x.shape[0] / (x.shape[0] - 1)


def solve_input(dw: torch.Tensor, db: torch.Tensor, rel_threshold: float = 1e-6) -> tuple[torch.Tensor, int] | None:
    """A fully connected layer's input h from one sample's gradient, dW = db h^T: least squares
    over the rows that carry signal; (h, rows used), or None where the bias gradient is zero."""
    scale = db.abs().max()
    if not torch.isfinite(scale) or scale == 0:
        return None
    rows = db.abs() > rel_threshold * scale
    w = db[rows]
    return (w @ dw[rows]) / (w @ w), int(rows.sum())


def linear_layers(params: Params) -> list[str]:
    """Names (without .weight) of fully connected layers that have a bias, in model order."""
    return [n[: -len(".weight")] for n, p in params.items()
            if n.endswith(".weight") and p.ndim == 2 and n[: -len("weight")] + "bias" in params]


@dataclass(repr=False)  # reprs would print every tensor (vmap asks for one on every call)
class LeakedFeatures:
    """A prior from what a one-sample gradient gives away exactly: the input of every fully
    connected layer with a bias, h = dW_i / db_i (Phong et al. 2017; Geiping et al. 2020, Sec. 4).
    The prior is the relative squared error of the dummy image's own inputs to those layers,
    averaged over layers; it turns the deepest features into a direct target. It is off by
    default (`invgrad.features` 0): on one photo in one step, every weight tried scored below
    no prior at all on Flower's quickstart CNN, and gained at most a tenth of a dB on average on
    a BatchNorm ConvNet while its worst image fell further below the flat baseline (the
    `features` benchmark)."""

    model: FunctionalModel
    targets: dict[str, torch.Tensor]  # layer name -> its input (F,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with recording_inputs(self.model.module, list(self.targets)) as record:
            self.model.logits(self.model.params, x)
        return sum(((record[k].flatten() - t) ** 2).sum() / ((t ** 2).sum() + 1e-12)
                   for k, t in self.targets.items()) / len(self.targets)


def leaked_features(trial: "TrialUpdate", target: Params, n: int) -> LeakedFeatures | None:
    """The LeakedFeatures prior where the update is one sample's gradient (one image, one step,
    no modelled defense), else None."""
    if n != 1 or not trial.one_gradient(1):
        return None
    targets = {}
    for name in linear_layers(target):
        solved = solve_input(target[name + ".weight"].double(), target[name + ".bias"].double())
        if solved is not None:
            targets[name] = solved[0].float()
    return LeakedFeatures(trial.model, targets) if targets else None


def weighted_median(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per column of `values` (K, C), the value at which the weights (K,) of the smaller values
    first reach half of their total."""
    order = values.argsort(0)
    cumulative = weights[order].cumsum(0)
    first = (cumulative >= cumulative[-1:] / 2).float().argmax(0)
    return values.gather(0, order.gather(0, first[None]))[0]


def leaked_colour(target: Params, data: DataSpec, weighted: bool = False) -> torch.Tensor | None:
    """Each channel's mean over the client's images (C,), in model-input units, as the gradient
    of the layer that takes the images gives it away, or None.

    For every output unit k of that layer (a convolution or a fully connected layer, with a
    bias), dW_k / db_k is an average of the input patches weighted by the unit's error signal:
    its per-channel mean is the images' mean colour wherever that signal has one sign over the
    images and positions, and some other weighting where it has not. The guess of every unit
    whose colour falls outside the valid pixel range, or whose bias gradient is below 1e-3 of the
    largest, is dropped; the median of the others is returned. None where the first layer has no
    bias, or a bias without gradient (BatchNorm right after it), or takes other inputs, or where
    no unit is left.

    `weighted`: each guess counts by |db_k| in the median. A unit whose error signal changes
    sign over the positions averages its patches with weights of both signs, which cancel in db_k
    and throw the guess off, so the units with the largest |db_k| cancel least; over several
    images they may instead be the units one image's large error signal dominates. Measured (the
    `leaked_colour` benchmark, 8 victims per case): on one image the weighting halves the colour's
    error on the quickstart CNN and a ReLU LeNet with photos; over 4 to 16 images it gains or
    loses a few hundredths. As a start it did not pay: on the quickstart CNN, one photo, `invgrad`
    from the weighted colour recovered 2 of 8 victims where the plain median's recovered 4 (a
    start near a box bound loses its noise to the box), so attacks start from the plain median."""
    c, h, w = data.shape
    weight = next((name for name, p in target.items() if name.endswith(".weight") and p.ndim in (2, 4)), None)
    bias = None if weight is None else weight[: -len("weight")] + "bias"
    if bias not in target:
        return None
    dw, db = target[weight].detach().double(), target[bias].detach().double()
    if db.abs().max() <= 1e-6 * dw.abs().max():  # BatchNorm right after it zeroes the bias's gradient
        return None
    if dw.ndim == 4 and dw.shape[1] == c:
        per_unit = dw.mean((2, 3))
    elif dw.ndim == 2 and dw.shape[1] == c * h * w:
        per_unit = dw.view(len(dw), c, h * w).mean(2)
    else:
        return None
    guess = per_unit / db[:, None]
    lo, hi = (b.flatten().double().to(guess.device) for b in data.bounds())
    ok = (torch.isfinite(guess).all(1) & (guess >= lo).all(1) & (guess <= hi).all(1)
          & (db.abs() > 1e-3 * db.abs().max()))
    if not ok.any():
        return None
    if weighted:
        return weighted_median(guess[ok], db[ok].abs()).float().cpu()
    return guess[ok].median(0).values.float().cpu()


PRIORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tv": total_variation, "l2": squared_norm, "epoch-invariance": epoch_invariance,
}


# -- the matching objective ---------------------------------------------------------------

@dataclass(repr=False)  # reprs would print every tensor (vmap asks for one on every call)
class Matching:
    """One gradient-matching problem: a trial update, the observed target, a distance and
    weighted priors on the images."""

    trial: TrialUpdate
    target: Params  # observed update in gradient units
    distance: Callable[[Params, Params], torch.Tensor]
    priors: tuple[tuple[float, Callable[[torch.Tensor], torch.Tensor]], ...] = ()
    prior_scale: float = 1.0  # multiplies every prior weight (an optimizer may anneal it)
    balance: float | None = None  # the priors' balance factor where the last balanced run measured it
    # further observed quantities matched beside the update, weighted (`RunningStatistics`)
    observed: tuple[tuple[float, Callable[[torch.Tensor], torch.Tensor]], ...] = ()

    def mismatch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        d = self.distance(self.trial(x, y), self.target)
        return d + sum(w * fn(x) for w, fn in self.observed) if self.observed else d

    def prior(self, x: torch.Tensor) -> torch.Tensor | float:
        return sum((self.prior_scale * w * fn(x) for w, fn in self.priors if w), 0.0)

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mismatch(x, y) + self.prior(x)


def matching(obs: Observation, device: torch.device | None = None, distance: str = "cosine",
             priors: dict[str, float] | None = None, adaptive: bool = False, bn_stats: float = 0.0) -> Matching:
    """The matching problem of an observation: `distance` by name, priors as {name: weight};
    `bn_stats` > 0 also matches the BatchNorm running statistics the client returned, at that
    weight (`RunningStatistics`), where it returned any."""
    if distance not in DISTANCES:
        raise ConfigError("distance", f"{distance!r} is not one of {', '.join(DISTANCES)}")
    if priors is not None and not isinstance(priors, dict):
        raise ConfigError("priors", f"expected {{prior name: weight}}, got {priors!r}")
    for name, weight in (priors or {}).items():
        if name not in PRIORS:
            raise ConfigError("priors", f"{name!r} is not one of {', '.join(PRIORS)}")
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ConfigError(f"priors.{name}", f"a weight is a finite number >= 0, got {weight!r}")
    trial = trial_update(obs, device, adaptive=adaptive)
    stats = running_statistics(obs, trial.model) if bn_stats > 0 else None
    return Matching(trial=trial, target=target(obs, device), distance=DISTANCES[distance],
                    priors=tuple((float(w), PRIORS[name]) for name, w in (priors or {}).items() if w),
                    observed=((float(bn_stats), stats),) if stats is not None else ())


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


def finite_or_inf(t: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(t, nan=math.inf, posinf=math.inf)
