"""Flower's own differential privacy, as a deployment would switch it on.

- `flowerdp`: central DP with client-side fixed clipping (McMahan et al., Learning
  Differentially Private Recurrent Language Models, ICLR 2018). Each client clips its whole
  model update to `clipping_norm` (L2, parameter units, all arrays) with Flower's
  `fixedclipping_mod`; the server wraps its strategy in Flower's
  `DifferentialPrivacyClientSideFixedClipping`, which adds Gaussian noise of std
  noise_multiplier * clipping_norm / (clients per round) to the aggregate. The noise protects
  the released model, not single updates: the audited server sees clipped, noise-free updates.
  Privacy is accounted per round as one Gaussian release (client-level DP, add/remove one
  client, no amplification by sampling: the model Flower's accounting supports for fixed
  clipping) with an RDP accountant; epsilon at `delta` is reported in the round's aggregated
  train metrics ("flowerdp_epsilon").
- `localdp`: Flower's `LocalDpMod`: the client clips its update to `clipping_norm` and adds
  Gaussian noise of std sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon to the parameters it
  sends (the Gaussian mechanism, (epsilon, delta)-DP per round for that sensitivity); the
  client reports that epsilon as "localdp_epsilon", and as "epsilon" unless DP-SGD's is there.

In a simulation the ClientApp applies Flower's mods on its train messages (see
fedattack.client.app). Where local training runs outside the ClientApp (`fedattack
attack`), `on_update` applies the same Flower functions to the update. Both are seeded from
the client's generator (Flower draws from NumPy's global generator).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
from flwr.serverapp import GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod
from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_clip_model_update

from fedattack.defenses.base import DefenseContext, DefenseSpec, register_defense
from fedattack.defenses.clipping import clip_to
from fedattack.validate import check_between, check_range


@dataclass
class FlowerDPParams:
    noise_multiplier: float = 1.0  # server noise std / clipping_norm
    clipping_norm: float = 1.0  # L2 bound on each client's model update (parameter units)
    delta: float = 1e-5  # delta at which the server reports epsilon

    def validate(self, name: str) -> None:
        check_range(name, "noise_multiplier", self.noise_multiplier, lo=0.0)
        check_range(name, "clipping_norm", self.clipping_norm, lo=0.0, lo_open=True)
        check_between(name, "delta", self.delta, 0, 1, lo_open=True, hi_open=True)


@dataclass
class LocalDPParams:
    clipping_norm: float = 1.0  # L2 bound on the client's model update (parameter units)
    sensitivity: float = 1.0  # sensitivity the Gaussian mechanism's noise is calibrated to
    epsilon: float = 1.0  # per-round privacy budget
    delta: float = 1e-5

    def validate(self, name: str) -> None:
        check_range(name, "clipping_norm", self.clipping_norm, lo=0.0, lo_open=True)
        check_range(name, "sensitivity", self.sensitivity, lo=0.0)
        check_range(name, "epsilon", self.epsilon, lo=0.0, lo_open=True)
        check_between(name, "delta", self.delta, 0, 1, lo_open=True, hi_open=True)


def localdp_std(params: LocalDPParams) -> float:
    """The noise std LocalDpMod adds (the Gaussian mechanism's calibration)."""
    return params.sensitivity * math.sqrt(2 * math.log(1.25 / params.delta)) / params.epsilon


# -- client side ------------------------------------------------------------------

def client_mods(cfg) -> list:
    """Flower mods for the configured protocol-level DP defenses, innermost first
    (the first configured defense acts first on the reply)."""
    mods = []
    for name in cfg.client.defenses:
        if name == "flowerdp":
            mods.append(ZeroUpdateSafe(fixedclipping_mod))
        elif name == "localdp":
            p = cfg.defense("localdp")
            mods.append(ZeroUpdateSafe(LocalDpMod(p.clipping_norm, p.sensitivity, p.epsilon, p.delta), localdp_std(p)))
    return mods


@dataclass(frozen=True)
class ZeroUpdateSafe:
    """A Flower DP mod that lets a reply whose update is exactly zero through: Flower's clipping
    divides by the update's norm and raises ZeroDivisionError, where a zero update is inside
    every bound and clipping leaves it as it is; the mod's noise (`noise_std`, LocalDpMod's) is
    still added. A saturated model (every unit dead) trains to a zero update."""

    mod: Any
    noise_std: float = 0.0

    def __call__(self, msg: Message, context: Any, call_next: Any) -> Message:
        replies: list[Message] = []

        def recorded(m: Message, c: Any) -> Message:
            replies.append(call_next(m, c))
            return replies[-1]

        try:
            return self.mod(msg, context, recorded)
        except ZeroDivisionError:
            if not replies or not _zero_update(msg, replies[-1]):
                raise
        reply = replies[-1]
        if self.noise_std > 0:
            key, arrays = next(iter(reply.content.array_records.items()))
            values = arrays.to_numpy_ndarrays()
            add_gaussian_noise_inplace(values, self.noise_std)
            reply.content.array_records[key] = ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(arrays, values)})
        return reply


def _zero_update(msg: Message, reply: Message) -> bool:
    """Whether the reply's arrays are the ones the message sent, unchanged."""
    if len(msg.content.array_records) != 1 or len(reply.content.array_records) != 1:
        return False
    sent = next(iter(msg.content.array_records.values()))
    got = next(iter(reply.content.array_records.values()))
    return list(sent) == list(got) and all(np.array_equal(sent[k].numpy(), got[k].numpy()) for k in sent)


@contextmanager
def numpy_seed(seed: int):
    """Seed NumPy's global generator (which Flower's DP functions draw from), then restore it."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def _apply_flower(update: dict[str, torch.Tensor], ctx: DefenseContext, clipping_norm: float,
                  noise_std: float) -> dict[str, torch.Tensor]:
    """What Flower's mods do to a reply, applied to an update: clip (sent + update) - sent
    with Flower's compute_clip_model_update, then add Flower's Gaussian noise."""
    keys = list(update)
    new = {k: v.detach() for k, v in (getattr(ctx.model, "_module", ctx.model)).named_parameters()}
    sent = [(new[k] - update[k]).double().cpu().numpy() for k in keys]
    received = [new[k].double().cpu().numpy() for k in keys]
    if any(v.any() for v in update.values()):  # a zero update is inside the bound; Flower's clip divides by its norm
        compute_clip_model_update(received, sent, clipping_norm)
    if noise_std > 0:
        with numpy_seed(int(torch.randint(0, 2**31, (1,), generator=ctx.generator))):
            add_gaussian_noise_inplace(received, noise_std)
    return {k: torch.as_tensor(r - s, dtype=update[k].dtype) for k, r, s in zip(keys, received, sent)}


def flowerdp_update(update, params: FlowerDPParams, ctx: DefenseContext):
    return _apply_flower(update, ctx, params.clipping_norm, 0.0)


def localdp_update(update, params: LocalDPParams, ctx: DefenseContext):
    ctx.metrics["localdp_epsilon"] = params.epsilon
    ctx.metrics.setdefault("epsilon", params.epsilon)
    return _apply_flower(update, ctx, params.clipping_norm, localdp_std(params))


def clip_norm_adapt(trial, observed, params, scale=None):
    """The attacker's model: the same clipping of the update (parameter units)."""
    return clip_to(trial, params.clipping_norm)


# -- server side ------------------------------------------------------------------

def make_accountant(population: int, delta: float):
    """Flower's RDP accountant (flwr[dp]): Gaussian releases, add/remove one client, no amplification."""
    config = PrivacyConfig(target_delta=delta, population_size=population,
                           neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                           sampling_method=SamplingMethod.NO_AMPLIFICATION)
    return RdpAccountant(config)


class AccountedClientSideFixedClipping(DifferentialPrivacyClientSideFixedClipping):
    """Flower's DifferentialPrivacyClientSideFixedClipping; every noised aggregate is composed
    into `privacy` (a flwr PrivacyAccountant) and its epsilon added to the aggregated train
    metrics. (Flower's own accounted mode would also demand equal client weights.) With `seed`,
    each round's noise is drawn from NumPy's global generator (which Flower's noise uses) seeded
    from (seed, round), so a run's seed fixes it."""

    def __init__(self, strategy, noise_multiplier: float, clipping_norm: float, num_sampled_clients: int,
                 privacy, seed: int | None = None) -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients)
        self.privacy, self.seed = privacy, seed

    def aggregate_train(self, server_round, replies):
        if self.seed is None:
            arrays, metrics = super().aggregate_train(server_round, replies)
        else:
            with numpy_seed(int(np.random.default_rng([self.seed, server_round, 3]).integers(2**31))):
                arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and self.noise_multiplier > 0:
            self.privacy.compose(GaussianPrivacyEvent(self.noise_multiplier, self.num_sampled_clients,
                                                      self.privacy.config.population_size))
            metrics = metrics if metrics is not None else MetricRecord()
            metrics["flowerdp_epsilon"] = float(self.privacy.get_epsilon(self.privacy.config.target_delta))
        return arrays, metrics


def server_strategy(strategy, cfg):
    """Wrap the configured strategy for the server side of `flowerdp` (else return it)."""
    if "flowerdp" not in cfg.client.defenses:
        return strategy
    p = cfg.defense("flowerdp")
    return AccountedClientSideFixedClipping(strategy, p.noise_multiplier, p.clipping_norm, cfg.fl.clients_per_round,
                                            make_accountant(cfg.fl.num_clients, p.delta), seed=cfg.seed)


register_defense(DefenseSpec(
    name="flowerdp", params=FlowerDPParams, where="protocol", protocol="flowerdp", main_param="noise_multiplier",
    on_update=flowerdp_update, adapt=clip_norm_adapt,
    audit_note="central DP, whose noise is added to each round's aggregate after the server has seen every "
               "client's clipped update: the attacks face its clipping alone (clipping_norm), and the noise "
               "protects the released model",
    paper="McMahan et al., Learning Differentially Private Recurrent Language Models, ICLR 2018 "
          "(Flower DifferentialPrivacyClientSideFixedClipping + fixedclipping_mod)"))
register_defense(DefenseSpec(
    name="localdp", params=LocalDPParams, where="protocol", protocol="localdp", main_param="epsilon",
    on_update=localdp_update, adapt=clip_norm_adapt,
    paper="Dwork and Roth, The Algorithmic Foundations of Differential Privacy, 2014 (Gaussian mechanism; "
          "Flower LocalDpMod)"))
