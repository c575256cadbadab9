"""What an attack is: a function of an Observation, its own parameters, and a context.

    @register_attack("dlg", params=DLGParams, paper="Zhu et al., Deep Leakage from Gradients, NeurIPS 2019")
    def dlg(obs: Observation, params: DLGParams, ctx: AttackContext) -> Reconstruction: ...

The signature is the threat model: the attack gets what the server holds and nothing of the
client's data (see fedattack.threat).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from fedattack.errors import AttackFailure
from fedattack.registry import Registry, describe
from fedattack.threat import Observation, Reconstruction


@dataclass
class AttackContext:
    """Run-time context of one attack job (not part of the threat model)."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    labels: str = "auto"  # label-recovery method for attacks that need labels first
    adaptive: bool = False  # model the known defense in the attack's objective
    log: Callable[[str], None] = lambda msg: None

    def generator(self, offset: int = 0) -> torch.Generator:
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed + offset)
        return g


@dataclass(frozen=True)
class LogRange:
    """A positive hyperparameter searched on a log scale, from `low` to `high`."""

    low: float
    high: float


@dataclass(frozen=True)
class Choice:
    """A hyperparameter that takes one of `options`."""

    options: tuple


@dataclass(frozen=True)
class AttackSpec:
    name: str
    fn: Callable[[Observation, Any, AttackContext], Reconstruction]
    params: type
    paper: str
    scope: str = "client"  # client: one client's update; aggregate: a sum over clients; any
    needs_malicious: bool = False  # needs server.mode=malicious (it changes the model sent)
    model_extension: str | None = None  # what a malicious server adds to the model it sends
    adaptive: bool = False  # can model the known defense (runs again under audit.adaptive)
    tunable: tuple[tuple[str, LogRange | Choice], ...] = ()  # what calibration tunes (audit.calibrate)
    needs: str = ""  # what the model must have for the attack to run, in words ("" where any model will do)
    # (model the server sends, params): raises ConfigError where a parameter names what the model
    # lacks (analytic's layer names); checked where the audit starts, before any job
    check_model: Callable[[torch.nn.Module, Any], None] | None = None

    def __call__(self, obs: Observation, params: Any, ctx: AttackContext) -> Reconstruction:
        try:
            rec = self.fn(obs, params, ctx)
        except (RuntimeError, NotImplementedError) as exc:
            op = re.search(r"derivative for (\S+) is not implemented", str(exc))
            if op is None:
                raise
            raise AttackFailure(f"the model uses an operation PyTorch cannot differentiate twice ({op.group(1)}), "
                                "which matching a gradient needs; attacks that solve for the input (analytic, rtf) "
                                "or a model with another activation can run") from exc
        return checked_output(self.name, rec, obs)

    @property
    def __doc__(self) -> str:  # type: ignore[override]
        return self.paper


@dataclass
class NoParams:
    """An attack or defense without parameters."""


def attack_problem(obj: Any) -> str | None:
    """Why an imported `obj` is not an attack (None if it is): what `@register_attack` returns,
    around a function that takes (obs, params, ctx), checked where the config is read rather
    than in the first job."""
    if not isinstance(obj, AttackSpec):
        return f"is {describe(obj)}, not an attack (AttackSpec: what @register_attack returns)"
    try:
        inspect.signature(obj.fn).bind(None, None, None)
    except TypeError:
        return f"is an attack around {describe(obj.fn)}, which does not take (obs, params, ctx)"
    except ValueError:  # no signature to inspect (a builtin): the job says
        pass
    return None


ATTACKS: Registry[AttackSpec] = Registry("attack", "audit.attacks", accepts=attack_problem)


def needing_malicious_server(names) -> list[str]:
    """The attacks among `names` (registered names or `module:attr` paths) that need a
    malicious server (one that changes the model it sends)."""
    return [a for a in names if (spec := ATTACKS.find(a)) is not None and spec.needs_malicious]


def read_gradient(obs: Observation, attack: str) -> dict[str, torch.Tensor]:
    """The update in gradient units for an attack that reads it in closed form (analytic, rtf,
    rgap): an SGD step is the learning rate times the gradient (`Observation.gradient_estimate`
    takes the weight decay out); an Adam step divides each entry by its own running size, so at
    the first step it is the gradient's sign, and no closed form reads the gradient back."""
    if obs.protocol.optimizer != "sgd":
        raise AttackFailure(f"{attack} reads the update as a gradient in closed form; the client's "
                            f"{obs.protocol.optimizer} steps scale each entry by its own size")
    return obs.gradient_estimate()


def checked_output(name: str, rec: Any, obs: Observation) -> Reconstruction:
    """`rec` if it keeps the Reconstruction contract for `obs`, else a TypeError or ValueError that
    says how it breaks it: images None or (N, C, H, W) tensors of the data's shape, labels None or a
    tensor of one entry (or one row of class scores) per image. An attack's bug then ends its own
    job as an error row, instead of the scoring that follows ending the run."""
    if not isinstance(rec, Reconstruction):
        raise TypeError(f"attack '{name}' returned {type(rec).__name__}, not a fedattack.threat.Reconstruction")
    if rec.images is not None:
        if not isinstance(rec.images, torch.Tensor):
            raise TypeError(f"attack '{name}' returned images of type {type(rec.images).__name__}, not a tensor")
        if rec.images.dim() != 4 or tuple(rec.images.shape[1:]) != tuple(obs.data.shape):
            raise ValueError(f"attack '{name}' returned images of shape {tuple(rec.images.shape)}; the data's "
                             f"images are (N, {', '.join(map(str, obs.data.shape))})")
    if rec.labels is not None:
        if not isinstance(rec.labels, torch.Tensor) or rec.labels.dim() not in (1, 2):
            raise TypeError(f"attack '{name}' returned labels of type {type(rec.labels).__name__}"
                            f"{'' if not isinstance(rec.labels, torch.Tensor) else f' with {rec.labels.dim()} dims'}: "
                            "a tensor of class ids (N,) or class scores (N, classes) is expected")
        if rec.images is not None and len(rec.images) and len(rec.labels) != len(rec.images):
            raise ValueError(f"attack '{name}' returned {len(rec.labels)} labels for {len(rec.images)} images")
        classes = obs.model.num_classes
        if rec.labels.dim() == 2 and rec.labels.shape[1] != classes:
            raise ValueError(f"attack '{name}' returned scores over {rec.labels.shape[1]} classes; the model has "
                             f"{classes}")
        if rec.labels.dim() == 1 and len(rec.labels):
            if rec.labels.is_floating_point() or rec.labels.is_complex():
                raise TypeError(f"attack '{name}' returned labels of dtype {rec.labels.dtype}: class ids are integers")
            low, high = int(rec.labels.min()), int(rec.labels.max())
            if low < 0 or high >= classes:
                raise ValueError(f"attack '{name}' returned labels {low} to {high}; the model's classes are 0 to "
                                 f"{classes - 1}")
    return rec


def register_attack(name: str, *, params: type = NoParams, paper: str, scope: str = "client",
                    needs_malicious: bool = False, model_extension: str | None = None,
                    adaptive: bool = False, tunable: dict[str, LogRange | Choice] | None = None,
                    needs: str = "", check_model: Callable[[torch.nn.Module, Any], None] | None = None) -> Callable:
    """Register an attack under `name`. `tunable` names the hyperparameters (fields of
    `params`) that server-side calibration may tune, with their search ranges; `needs` says
    what the model must have for it to run (where a hint suggests the attack); `check_model`
    refuses parameters that name what the model lacks (see AttackSpec)."""

    def deco(fn: Callable) -> Callable:
        spec = AttackSpec(name, fn, params, paper, scope, needs_malicious, model_extension, adaptive,
                          tuple((tunable or {}).items()), needs, check_model)
        ATTACKS.register(name, spec, doc=paper)
        return spec  # callable like the function; importable as `module:name` for plug-ins

    return deco
