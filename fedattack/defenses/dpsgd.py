"""`dpsgd`: differentially private local training with Opacus.

- variant `opacus`: DP-SGD of Abadi et al., Deep Learning with Differential Privacy, CCS 2016:
  Poisson-sampled batches, each example's gradient clipped to `max_grad_norm` (L2 over all
  parameters), Gaussian noise of std `noise_multiplier * max_grad_norm` on the sum.
- variant `fedcdp`: Fed-CDP of Wei et al., Gradient-Leakage Resilient Federated Learning,
  ICDCS 2021: per-example, per-layer clipping. Each of the L parameter tensors of an example's
  gradient is clipped to max_grad_norm / sqrt(L) (Opacus's clipping="per_layer"), so the
  total sensitivity, the noise and the epsilon equal the `opacus` variant's at the same
  settings and only the clipping geometry differs.

Opacus's PrivacyEngine wraps the client's own model, optimizer and data: the round's samples
become a DataLoader of batch `client.batch_size`, sampled with rate q = 1 / (batches per
pass) by Opacus's DPDataLoader, for as many steps as the round's schedule has. Opacus's RDP
accountant gives epsilon at `delta` for the round; it is reported in the client's metrics
("epsilon", with "dp_noise_multiplier", "dp_sample_rate", "dp_steps" so rounds can be
composed). Models with BatchNorm cannot be trained with per-example gradients (ConfigError).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, TensorDataset

from fedattack.defenses.base import DefenseContext, DefenseSpec, register_defense
from fedattack.errors import ConfigError
from fedattack.validate import check_choice, check_range

# Opacus's hooks on the first layer fire without input gradients; harmless for training
warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")


def check_open_unit(name: str, key: str, value: float) -> None:
    if not 0 < value < 1:
        raise ConfigError(f"{name}.{key}", f"must be in (0, 1), got {value}")


@dataclass
class DPSGDParams:
    noise_multiplier: float = 1.0  # noise std / clipping bound
    max_grad_norm: float = 1.0  # per-example L2 clipping bound (split over layers for fedcdp)
    delta: float = 1e-5  # delta at which epsilon is reported
    variant: str = "opacus"  # opacus | fedcdp

    def validate(self, name: str) -> None:
        check_range(name, "noise_multiplier", self.noise_multiplier, lo=0.0)
        check_range(name, "max_grad_norm", self.max_grad_norm, lo=0.0, lo_open=True)
        check_open_unit(name, "delta", self.delta)
        check_choice(name, "variant", self.variant, ["opacus", "fedcdp"])


class StepLoader:
    """Batches of a DataLoader, pass after pass, until `steps` batches were yielded."""

    def __init__(self, loader: DataLoader, steps: int):
        self.loader, self.steps = loader, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        done = 0
        while done < self.steps:
            for batch in self.loader:
                yield batch
                done += 1
                if done == self.steps:
                    return


def clipping_of(model: torch.nn.Module, params: DPSGDParams) -> tuple[str, float | list[float]]:
    if params.variant == "opacus":
        return "flat", params.max_grad_norm
    n = sum(1 for p in model.parameters() if p.requires_grad)
    return "per_layer", [params.max_grad_norm / math.sqrt(n)] * n


def dpsgd_check(model: torch.nn.Module, params: DPSGDParams | None = None) -> None:
    """Opacus's own validator: the layers it cannot compute per-example gradients of (BatchNorm)."""
    from opacus.validators import ModuleValidator

    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        reason = str(problems[0]).split(". ")[0].rstrip(".")  # Opacus explains at length; its first sentence says what
        hint = ("; use a model without BatchNorm (model.name=lenet or mlp)" if "BatchNorm" in reason else "")
        raise ConfigError("client.defenses", f"dpsgd: Opacus cannot compute per-example gradients of this model "
                                             f"({reason}){hint}")


def dpsgd_train(model, optimizer, loader, params: DPSGDParams, ctx: DefenseContext):
    from opacus import PrivacyEngine
    from opacus.data_loader import DPDataLoader

    dpsgd_check(model)
    batch_size = max(len(b[1]) for b in loader)
    base = DataLoader(TensorDataset(ctx.images, ctx.labels), batch_size=batch_size)
    dp_loader = DPDataLoader.from_data_loader(base, generator=ctx.generator)  # Poisson sampling, seeded
    clipping, bound = clipping_of(model, params)
    with warnings.catch_warnings():  # the noise is seeded on purpose, for reproducible runs
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")
    module, optimizer, dp_loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=dp_loader, noise_multiplier=params.noise_multiplier,
        max_grad_norm=bound, clipping=clipping, poisson_sampling=False, noise_generator=ctx.generator)
    ctx.state["dpsgd"] = (engine, module, dp_loader.sample_rate)
    return module, optimizer, StepLoader(dp_loader, ctx.steps)


def dpsgd_update(update, params: DPSGDParams, ctx: DefenseContext):
    engine, module, rate = ctx.state.pop("dpsgd")
    module.to_standard_module()  # remove Opacus's hooks from the client's model
    steps = sum(n for _, _, n in engine.accountant.history)
    ctx.metrics.update({
        "epsilon": float(engine.get_epsilon(params.delta)) if steps else 0.0,
        "dp_delta": params.delta,
        "dp_noise_multiplier": params.noise_multiplier,
        "dp_sample_rate": float(rate),
        "dp_steps": float(steps),
    })
    return update


register_defense(DefenseSpec(
    name="dpsgd", params=DPSGDParams, where="training", main_param="noise_multiplier", on_train=dpsgd_train,
    on_update=dpsgd_update, check_model=dpsgd_check,
    # per-example clipping scales each sample's gradient by a positive factor; noise flips signs
    keeps_signs=lambda params: params.noise_multiplier == 0,
    paper="Abadi et al., Deep Learning with Differential Privacy, CCS 2016 (Opacus); Fed-CDP: Wei et al., "
          "Gradient-Leakage Resilient Federated Learning, ICDCS 2021"))
