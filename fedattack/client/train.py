"""Local training as FL clients do it: SGD for S steps (or E epochs) of batch B, then defenses.

The round's samples are drawn from the client's partition with a generator seeded by
(seed, round, client), so a run is reproducible. In step mode each sample is used once when
the partition is large enough (the realistic FedAvg "a few local steps" setting).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from fedattack.config import proximal_mu
from fedattack.data import ImageData
from fedattack.defenses import DEFENSES, DefenseContext, DefenseSpec
from fedattack.errors import ConfigError, FedattackError, first_line
from fedattack.models import float_params
from fedattack.schema import Config
from fedattack.text import counted


@dataclass
class TrainResult:
    update: dict[str, torch.Tensor]  # new float params - sent float params, after defenses
    indices: list[int]  # distinct dataset indices trained on (audit-only)
    steps: int
    loss: float
    num_examples: int  # distinct samples trained on (what FedAvg weights by)
    metrics: dict[str, float] = field(default_factory=dict)


def schedule(partition: np.ndarray, cfg: Config, rnd: int, client: int) -> list[np.ndarray]:
    """The batches of one round: lists of dataset indices.

    Local steps (`client.local_steps`): batches of B = min(batch_size, samples) in one shuffled
    order, wrapping around it (no sample twice in a batch), as the attacks' trial-update engine
    replays them (fedattack.attacks.engine.schedule). Local epochs: a fresh shuffle per epoch,
    its last batch smaller."""
    rng = np.random.default_rng([cfg.seed, rnd, client])
    b = cfg.client.batch_size
    if cfg.client.local_steps > 0:
        order = rng.permutation(partition)
        b = min(b, len(order))
        return [order[[(s * b + j) % len(order) for j in range(b)]] for s in range(cfg.client.local_steps)]
    batches = []
    for _ in range(cfg.client.local_epochs):
        order = rng.permutation(partition)
        batches.extend(order[i:i + b] for i in range(0, len(order), b))
    return batches


def soft_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for hard (N,) class ids or soft (N, C) class probabilities (mixup).

    An empty batch (DP-SGD's Poisson sampling can draw one) has loss 0 with zero gradients."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    if y.dim() == 2:
        return F.cross_entropy(logits, y.to(logits.dtype))
    return F.cross_entropy(logits, y)


def client_seed(seed: int, rnd: int, client: int, *, stream: int) -> int:
    """The seed of one of a client's random streams in round `rnd`: 1 its defenses' generator,
    2 Flower's DP noise, 3 SecAgg+'s rounding, 4 torch's global generator in local training."""
    return int(np.random.default_rng([seed, rnd, client, stream]).integers(2**31))


def local_train(model: torch.nn.Module, data: ImageData, partition: np.ndarray, cfg: Config, *, rnd: int,
                client: int, protocol_defenses: bool = True) -> TrainResult:
    """Train `model` in place on the client's data and return the defended update.

    Defenses run in the order of `client.defenses`, each at its hooks. `protocol_defenses`
    False leaves out the client-side step of protocol-level defenses (Flower's DP mods),
    which the ClientApp applies through Flower's own mods around this function."""
    specs = [(plugin_hooks(DEFENSES.get(d), d), cfg.defense(d)) for d in cfg.client.defenses]
    if not protocol_defenses:
        specs = [(s, p) for s, p in specs if s.where != "protocol"]
    batches = schedule(partition, cfg, rnd, client)
    used = np.unique(np.concatenate(batches))
    x_all, y_all = data.get(used)
    pos = {int(i): k for k, i in enumerate(used)}
    gen = torch.Generator().manual_seed(client_seed(cfg.seed, rnd, client, stream=1))
    ctx = DefenseContext(model=model, images=x_all, labels=y_all, num_classes=data.spec.num_classes,
                         generator=gen, round=rnd, steps=len(batches), lr=cfg.client.lr, data=data.spec,
                         dataset=data, partition=np.asarray(partition))

    sent = float_params(model)
    mu = cfg.client.proximal_mu or proximal_mu(cfg)  # the train message's "proximal-mu", or the config's FedProx
    model.train()
    optimizer = client_optimizer(model, cfg)
    loader = [(x_all[[pos[int(i)] for i in b]], y_all[[pos[int(i)] for i in b]]) for b in batches]
    # What the model and the hooks draw from torch's global generator (dropout, PRECODE's sampling)
    # is drawn per round and client too, and leaves the caller's generator as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(client_seed(cfg.seed, rnd, client, stream=4))
        for spec, params in specs:
            if spec.on_train is not None:
                model, optimizer, loader = spec.on_train(model, optimizer, loader, params, ctx)
        losses = _steps(model, optimizer, loader, specs, ctx, sent=sent, mu=mu)
    new = {k: v.detach() for k, v in _unwrap(model).named_parameters()}
    update = {k: new[k] - sent[k] for k in sent}
    for spec, params in specs:
        if spec.on_update is not None:
            update = spec.on_update(update, params, ctx)
    return TrainResult(update=update, indices=[int(i) for i in used], steps=len(batches),
                       loss=float(np.mean(losses)) if losses else float("nan"),
                       num_examples=len(used), metrics=dict(ctx.metrics))


def _steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: list, specs: list,
           ctx: DefenseContext, *, sent: dict[str, torch.Tensor], mu: float) -> list[float]:
    """One optimizer step per batch of `loader`, through the defenses' batch and loss hooks
    (FedProx's proximal term where `mu`); the losses."""
    losses = []
    for x, y in loader:
        for spec, params in specs:
            if spec.on_batch is not None:
                x, y = spec.on_batch(x, y, params, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss = soft_cross_entropy(model(x), y)
        for spec, params in specs:
            if spec.loss is not None:
                extra = spec.loss(model, params, ctx)
                if extra is not None:
                    loss = loss + extra
        loss.backward()
        if mu:  # FedProx: the gradient of (mu/2)||w - w_global||^2
            with torch.no_grad():
                for name, p in _unwrap(model).named_parameters():
                    if p.grad is not None and name in sent:
                        p.grad += mu * (p - sent[name])
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def plugin_hooks(spec: DefenseSpec, name: str) -> DefenseSpec:
    """A defense of the user's own (an import path) with its data and update hooks checked: an
    exception, or a batch or update not of the kind given, is a ConfigError naming
    client.defenses and the hook (the built-in defenses' hooks are called as they are)."""
    if ":" not in name:
        return spec

    def fault(hook: str, what: str) -> ConfigError:
        return ConfigError("client.defenses", f"{name}'s {hook} {what}")

    def call(hook: str, fn, *args):
        try:
            return fn(*args)
        except FedattackError:
            raise
        except Exception as exc:  # noqa: BLE001 - the user's hook may raise anything
            raise fault(hook, f"raised {type(exc).__name__}: {first_line(exc)[:160]}") from None

    def on_batch(x, y, params, ctx):
        out = call("on_batch", spec.on_batch, x, y, params, ctx)
        pair = isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)
        if not (pair and out[0].shape[1:] == x.shape[1:] and len(out[0]) == len(out[1])):
            got = (f"images of shape {tuple(out[0].shape)} and {counted(len(out[1]), 'label')}" if pair
                   else type(out).__name__)
            raise fault("on_batch", f"returned {got}; it returns (x, y), the batch's images of "
                                    f"shape (n, {', '.join(map(str, x.shape[1:]))}) and their n labels")
        return out

    def on_update(update, params, ctx):
        out = call("on_update", spec.on_update, update, params, ctx)
        if not isinstance(out, dict):
            got = type(out).__name__
        elif set(out) != set(update):
            missing, extra = sorted(set(update) - set(out)), sorted(set(out) - set(update))
            got = f"a dict {'without ' + repr(missing[0]) if missing else 'with an unknown key ' + repr(extra[0])}"
        else:
            k = next((k for k, v in update.items()
                      if not isinstance(out[k], torch.Tensor) or out[k].shape != v.shape), None)
            got = (f"{k!r} as {type(out[k]).__name__} of shape {tuple(getattr(out[k], 'shape', ()))}, "
                   f"not {tuple(update[k].shape)}" if k is not None else "")
        if got:
            raise fault("on_update", f"returned {got}; it returns the update it was given, a dict of "
                                     "every parameter's tensor, each of its own shape")
        return out

    return replace(spec, on_batch=on_batch if spec.on_batch is not None else None,
                   on_update=on_update if spec.on_update is not None else None)


def try_plugin_defenses(build: Callable[[], torch.nn.Module], data: ImageData, cfg: Config) -> None:
    """Run the hooks of every defense of the user's own (`plugin_hooks`) on one local step of
    two training images of a model `build` makes, so that a broken one is one line before a run
    starts (nothing is built where every defense is a built-in one)."""
    if any(":" in d for d in cfg.client.defenses):
        one = replace(cfg, client=replace(cfg.client, local_steps=1, batch_size=min(2, len(data))))
        local_train(build(), data, np.arange(one.client.batch_size), one, rnd=1, client=0)


def client_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """The local optimizer `client.optimizer` names, as the audit's engine replays it."""
    c = cfg.client
    if c.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                           nesterov=c.nesterov)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The user's module behind a wrapper (Opacus's GradSampleModule keeps it as `_module`)."""
    return getattr(model, "_module", model)


def evaluate(model: torch.nn.Module, data: ImageData, batch_size: int = 256,
             limit: int | None = None) -> tuple[float, float]:
    """(loss, accuracy) of `model` on `data`."""
    model.eval()
    n = len(data) if limit is None else min(limit, len(data))
    total_loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            x, y = data.get(range(start, min(n, start + batch_size)))
            logits = model(x)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
    return total_loss / max(n, 1), correct / max(n, 1)


def returned_state(model: torch.nn.Module, sent: dict[str, torch.Tensor], update: dict[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """What a client sends back after `local_train(model, ...)`: the weights it was sent plus its
    (defended) update, and every other entry of its state_dict (BatchNorm's running statistics) as
    its local training left them, as a Flower app that sends its whole state_dict does."""
    with torch.no_grad():
        state = {k: v.detach().clone() for k, v in _unwrap(model).state_dict().items()}
        for k, u in update.items():
            state[k] = sent[k] + u
    return state
