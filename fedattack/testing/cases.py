"""Cases: one simulated client update as the audit sees it (Observation + Truth)."""

from __future__ import annotations

import numpy as np
import torch

from fedattack import config as fconfig
from fedattack.client.train import local_train, returned_state, schedule
from fedattack.experiment import build
from fedattack.metrics.images import match_and_score
from fedattack.models import build_model, float_params
from fedattack.server.audit import make_observation
from fedattack.schema import Config
from fedattack.threat import DataSpec, ModelSpec, Observation, Protocol, Truth

# The setting the attack tests and benchmarks measure: DLG's LeNet with sigmoid activations at
# PyTorch's default init, clients taking small SGD steps (lr 0.01). The shipped default config
# trains a ReLU MLP at lr 0.1 instead (so that the default run learns); cases pin this one.
ATTACK_CASE = ("model.name=lenet", "model.activation=sigmoid", "client.lr=0.01")


def case_config(*overrides: str) -> Config:
    """The default config in the attack-case setting (ATTACK_CASE), no attacks, then `overrides`."""
    return fconfig.load(None, ["audit.attacks=[]", *ATTACK_CASE, *overrides])


def observed_update(*overrides: str, indices: list[int] | None = None) -> tuple[Observation, Truth]:
    """Train the victim client of the attack-case config (`case_config`) with `overrides` on
    `indices` (default: drawn by seed) and observe its update."""
    cfg = case_config(*overrides)
    exp = build(cfg)
    model = exp.initial_model()
    sent = {**dict(model.state_dict()), **float_params(model)}
    sent = {k: v.detach().clone() for k, v in sent.items()}
    if indices is None:
        need = max(1, cfg.client.local_steps) * cfg.client.batch_size
        indices = list(np.sort(np.random.default_rng(cfg.seed).choice(len(exp.train), need, replace=False)))
    result = local_train(model, exp.train, np.asarray(indices), cfg, rnd=1, client=0)
    received = returned_state(model, sent, result.update)
    names = [n for n, _ in exp.initial_model().named_parameters()]
    obs = make_observation(exp, names, sent, received,
                           {"num-examples": result.num_examples, "local_steps": result.steps})
    return obs, exp.train.truth(result.indices)


def training_order(truth: Truth, *overrides: str) -> list[int]:
    """Positions in `truth` (sorted by dataset index) of its samples in the order the victim
    client of `observed_update(*overrides)` first trained on them (its first epoch's order)."""
    batches = schedule(np.asarray(truth.indices), case_config(*overrides), 1, 0)  # round 1, client 0
    pos = {int(i): k for k, i in enumerate(truth.indices)}
    return [pos[i] for i in dict.fromkeys(int(i) for b in batches for i in b)]


def epoch_orders(truth: Truth, *overrides: str) -> torch.Tensor:
    """Per-epoch orders (E, N) of the victim client of `observed_update(*overrides)`, which
    reshuffles every local epoch, over its samples in `training_order`: slot j of epoch e
    trained on sample [e, j] (the first epoch's order is the identity), as
    `fedattack.attacks.optimize.Unknowns.orders` holds them."""
    batches = schedule(np.asarray(truth.indices), case_config(*overrides), 1, 0)
    first = [int(truth.indices[k]) for k in training_order(truth, *overrides)]
    slot = {i: k for k, i in enumerate(first)}
    flat = [slot[int(i)] for b in batches for i in b]
    return torch.tensor(flat).reshape(-1, len(first))


def psnr_ssim(images: torch.Tensor, truth: Truth, obs: Observation) -> tuple[float, float]:
    """Mean PSNR and SSIM of reconstructed `images` (model space) against the truth, matched."""
    s = match_and_score(obs.data.to_pixels(images.detach().cpu()).numpy(),
                        obs.data.to_pixels(truth.images).numpy())
    return float(s.psnr.mean()), float(s.ssim.mean())


def synthetic_update(labels: list[int], *, num_classes: int = 10, model: str = "lenet", activation: str = "sigmoid",
                     steps: int = 1, lr: float = 0.01, shape: tuple[int, int, int] = (3, 32, 32), seed: int = 0,
                     init: str = "default") -> tuple[Observation, Truth]:
    """An update of `steps` local SGD steps on random images with the given labels (a
    many-class case for label recovery, where no real data set is at hand offline)."""
    spec = DataSpec(shape=shape, num_classes=num_classes, mean=(0.5,) * shape[0], std=(0.25,) * shape[0])
    mspec = ModelSpec(name=model, activation=activation, num_classes=num_classes, in_shape=shape, init=init)
    net = build_model(mspec, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = spec.normalize(torch.rand((len(labels), *shape), generator=gen))
    y = torch.tensor(labels)
    sent = float_params(net)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    b = -(-len(labels) // steps)
    for s in range(steps):
        idx = list(range(s * b, min(len(labels), (s + 1) * b)))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    update = {k: v.detach() - sent[k] for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in build_model(mspec, seed=seed).named_buffers()}
    returned = {k: v.detach() for k, v in net.named_buffers()}
    obs = Observation(model=mspec, data=spec, global_params=sent, update=update, buffers=buffers,
                      returned_buffers=returned,
                      protocol=Protocol(lr=lr, local_steps=steps, local_epochs=1, batch_size=b,
                                        num_examples=len(labels)))
    return obs, Truth(images=x, labels=y)
