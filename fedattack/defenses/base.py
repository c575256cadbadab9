"""What a defense is: a parameter dataclass plus the hooks where a deployment applies it.

Hooks (each optional):
- `on_batch(x, y, params, ctx) -> (x, y)`: data-side, inside local training (mixup, ATS);
  `y` may come back as soft labels (N, num_classes).
- `on_train(model, optimizer, loader, params, ctx) -> (model, optimizer, loader)`: wraps
  local training (DP-SGD through Opacus).
- `on_update(update, params, ctx) -> update`: on the model update before it is sent
  (noise, clipping, top-k, pruning, quantization, Soteria).
- `loss(model, params, ctx) -> tensor`: a term added to the training loss after each
  forward pass (PRECODE's KL term).
- `protocol`: a name the simulation handles in the protocol itself (SecAgg+, Flower DP).
  Such a defense may also give `on_update`: the same client-side step, applied where local
  training runs outside the ClientApp (`fedattack attack`); the ClientApp applies Flower's
  mods instead.
- `adapt(trial, observed, params, scale) -> trial`: the attacker's differentiable model of
  the defense, applied to its simulated update when an attack runs with adaptive=true (GGL's
  adaptive attack, the Bayes adversary): same clipping bound, same pruning mask read off
  the observed zeros, Soteria's mask, ... (noise is modelled in the attack's likelihood).
  `trial` and `observed` are updates (new - sent weights); `scale` = lr * local steps, the
  factor between gradient units (where noise and clipping are configured) and update units.
- `keeps_signs(params) -> bool`: True where the defense, at these parameters, leaves every
  entry of the update with the sign training gave it (or zero): it scales the update by a
  positive factor, zeroes entries, or changes nothing. What the attacker reads off signs
  (the classes a bias update proves present) then still holds. Unset: it may flip signs.
- `scales(gradient, params) -> bool`: True where the defense may have multiplied this observed
  update (read as a gradient, -update / (lr * steps)) by a positive factor the server is not
  told: clipping, where the update's norm is at the bound. What the attacker reads off
  magnitudes in gradient units (label counts) must then estimate that factor. Unset: the
  defense leaves the update's scale alone (or hides it in noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from fedattack.errors import ConfigError
from fedattack.registry import Registry


@dataclass
class DefenseContext:
    """What a client-side hook may use: the client's own model, data and randomness."""

    model: torch.nn.Module | None = None
    images: torch.Tensor | None = None  # the samples trained on this round (model space)
    labels: torch.Tensor | None = None
    num_classes: int = 0
    generator: torch.Generator | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # reported back (e.g. epsilon)
    round: int = 0
    steps: int = 0
    lr: float = 0.0  # local learning rate: update = -lr * steps * gradient
    data: Any = None  # the DataSpec (normalization) of the client's images
    dataset: Any = None  # the client's local dataset (ImageData) and its indices, e.g. for mixup partners
    partition: Any = None
    state: dict[str, Any] = field(default_factory=dict)  # hooks of one defense share state here

    @property
    def scale(self) -> float:
        """Update units per gradient unit: lr * steps."""
        return self.lr * max(1, self.steps)


WHERE = ("training", "update", "protocol", "model")  # where a defense acts (DefenseSpec.where)


@dataclass(frozen=True)
class DefenseSpec:
    name: str
    params: type
    paper: str
    where: str  # training | update | protocol | model
    main_param: str | None = None  # the parameter a sweep varies by default
    on_batch: Callable[..., Any] | None = None
    on_train: Callable[..., Any] | None = None
    on_update: Callable[..., Any] | None = None
    loss: Callable[..., Any] | None = None
    protocol: str | None = None
    model_extension: str | None = None  # a model change the defense needs (PRECODE)
    adapt: Callable[..., Any] | None = None
    keeps_signs: Callable[[Any], bool] | None = None
    scales: Callable[[dict[str, torch.Tensor], Any], bool] | None = None
    # (model, params): raises ConfigError naming client.defenses where the defense cannot act on the
    # model; `fedattack run` and sweeps call it before Ray starts, not inside the first client
    check_model: Callable[[torch.nn.Module, Any], None] | None = None
    # what an audit of client updates faces of this defense, where that is less than its name
    # promises (flowerdp's noise goes on the aggregate, after the server saw each update)
    audit_note: str = ""

    def __post_init__(self) -> None:
        if self.where not in WHERE:
            raise ConfigError("where", f"{self.where!r} is not one of {', '.join(WHERE)} (defense {self.name})")


DEFENSES: Registry[DefenseSpec] = Registry("defense", "client.defenses")


def register_defense(spec: DefenseSpec) -> DefenseSpec:
    DEFENSES.register(spec.name, spec, doc=spec.paper)
    return spec


def audit_notes(names) -> list[str]:
    """The `audit_note` of each defense among `names` that has one, named."""
    return [f"{n}: {spec.audit_note}" for n in names if (spec := DEFENSES.find(n)) is not None and spec.audit_note]


def secure_aggregation(names) -> str | None:
    """The defense among `names` that hides each client's update in a sum (SecAgg+), if any."""
    return next((n for n in names if (spec := DEFENSES.find(n)) is not None and spec.protocol == "secagg"), None)


def keep_signs(defenses) -> bool:
    """True where every defense in `defenses` (DefenseSetting: name, params dict) keeps the
    update's signs at its configured parameters (`DefenseSpec.keeps_signs`); a defense that is
    not registered here, or says nothing, is taken to flip them."""
    for setting in defenses:
        spec = DEFENSES.find(setting.name)
        if spec is None or spec.keeps_signs is None or not spec.keeps_signs(spec.params(**setting.params)):
            return False
    return True


def scaled_by(defenses, gradient: dict[str, torch.Tensor]) -> bool:
    """True where a defense in `defenses` (DefenseSetting: name, params dict) may have multiplied
    the observed update, read as `gradient`, by a positive factor the server is not told
    (`DefenseSpec.scales`)."""
    for setting in defenses:
        spec = DEFENSES.find(setting.name)
        if spec is not None and spec.scales is not None and spec.scales(gradient, spec.params(**setting.params)):
            return True
    return False


def adapt_update(trial: dict[str, torch.Tensor], observed: dict[str, torch.Tensor], defenses,
                 scale: float | None = None) -> dict[str, torch.Tensor]:
    """Apply the known defenses' `adapt` hooks, in order, to an attacker's simulated update.

    `trial` and `observed` are updates (new - sent weights). `defenses` is the Observation's
    Protocol (preferred: it also gives lr and steps) or its tuple of DefenseSetting (name,
    params dict); `scale` = lr * local steps converts gradient units (clip.bound) to update
    units and is read off the Protocol when one is given."""
    if hasattr(defenses, "defenses"):  # a Protocol
        if scale is None:
            scale = defenses.lr * max(1, defenses.local_steps)
        defenses = defenses.defenses
    for setting in defenses:
        spec = DEFENSES.get(setting.name)
        if spec.adapt is not None:
            trial = spec.adapt(trial, observed, spec.params(**setting.params), scale)
    return trial
