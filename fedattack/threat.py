"""The threat model, in types.

What an attack may use is an `Observation`: the model architecture, the global weights the
server sent, the update it received back, and the protocol it configured. What happened on
the client (its images and labels) is a `Truth`, built only by the simulation for scoring;
no attack signature accepts one.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class DataSpec:
    """Public facts about the data: input shape, classes, normalization."""

    shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        m = torch.tensor(self.mean, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x01.dtype, device=x01.device).view(1, -1, 1, 1)
        return (x01 - m) / s

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Model-input space -> [0, 1] pixels."""
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x * s + m).clamp(0, 1)

    def bounds(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower/upper bounds of valid inputs in model space (pixels in [0, 1])."""
        m = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return (0 - m) / s, (1 - m) / s


class ModuleSource:
    """A user's own model, as the server holds it: a template module (deep-copied on every
    build) or a factory `fn() -> nn.Module` (called on every build).

    Attack jobs run in Ray workers, so a ModuleSource travels by pickle (cloudpickle): the
    template's class, or the factory, must be importable there (Flower and fedattack pass the
    driver's sys.path to their workers) or defined in `__main__` (pickled by value). Two
    sources are equal when they build the same architecture: the same class with the same
    parameter and buffer names and shapes (a factory: the same function).
    """

    __slots__ = ("template", "factory", "key")

    def __init__(self, template: torch.nn.Module | None = None, factory: Callable[[], torch.nn.Module] | None = None):
        if (template is None) == (factory is None):
            raise ValueError("ModuleSource takes a template module or a factory, not both")
        if template is not None:
            template = copy.deepcopy(template).cpu()
            cls = type(template)
            shapes = ";".join(f"{k}:{tuple(v.shape)}" for k, v in template.state_dict().items())
            digest = hashlib.sha1(shapes.encode()).hexdigest()[:12]
            key = f"{cls.__module__}.{cls.__qualname__}#{digest}"
        else:
            key = f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}()"
        object.__setattr__(self, "template", template)
        object.__setattr__(self, "factory", factory)
        object.__setattr__(self, "key", key)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ModuleSource is immutable")

    def __reduce__(self):
        return (ModuleSource, (self.template, self.factory))

    def build(self) -> torch.nn.Module:
        """A fresh copy of the user's module."""
        return copy.deepcopy(self.template) if self.template is not None else self.factory()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModuleSource) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"ModuleSource({self.key})"


@dataclass(frozen=True)
class ModelSpec:
    """The architecture the server distributes (plain data; fedattack.models.build_model builds it):
    a registered architecture by name, or the user's own module (`module`), then extensions."""

    name: str
    activation: str
    num_classes: int
    in_shape: tuple[int, int, int]
    width: int | None = None
    init: str = "default"
    init_scale: float = 0.5
    # model extensions in order, each (name, JSON of its parameters): a defense's
    # (PRECODE's bottleneck) or a malicious server's (Robbing the Fed's imprint block)
    extensions: tuple[tuple[str, str], ...] = ()
    # the user's own model (then `name` only names it and `activation`, `width`, `init` are unused)
    module: ModuleSource | None = None


@dataclass(frozen=True)
class DefenseSetting:
    """A client-side defense the server knows is in force (the protocol is public)."""

    name: str
    params: dict


@dataclass(frozen=True)
class Protocol:
    """The local-training protocol the server configured."""

    lr: float
    local_steps: int  # steps actually taken by the client
    local_epochs: int
    batch_size: int
    num_examples: int  # as reported by the client
    momentum: float = 0.0
    defenses: tuple[DefenseSetting, ...] = ()
    optimizer: str = "sgd"  # the client's local optimizer: sgd | adam (torch.optim semantics)
    weight_decay: float = 0.0
    nesterov: bool = False
    proximal_mu: float = 0.0  # FedProx: the clients add (mu/2)||w - w_global||^2 to their loss

    def defense(self, name: str) -> DefenseSetting | None:
        return next((d for d in self.defenses if d.name == name), None)


@dataclass(frozen=True)
class Observation:
    """Everything the (honest-but-curious or malicious) server holds about one update."""

    model: ModelSpec
    data: DataSpec
    global_params: dict[str, torch.Tensor]  # float parameters sent to the client
    update: dict[str, torch.Tensor]  # returned parameters minus global_params
    protocol: Protocol
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. BatchNorm stats
    # the buffers the client sent back (BatchNorm's running statistics as its local training left
    # them: Flower apps send the whole state_dict); empty where the server did not see them
    returned_buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    num_clients: int = 1  # > 1: the update is an aggregate over that many clients (SecAgg)
    server_mode: str = "honest"
    malicious: dict[str, Any] = field(default_factory=dict)  # what a malicious server changed

    def gradient_estimate(self) -> dict[str, torch.Tensor]:
        """The update read as one averaged gradient: -update / (lr * steps), less the weight
        decay SGD adds to each step's gradient (weight_decay * w, taken at the global weights:
        exact for one step, to first order for several)."""
        p = self.protocol
        scale = -1.0 / (p.lr * max(1, p.local_steps))
        decay = p.weight_decay if p.optimizer == "sgd" else 0.0
        return {k: v * scale - decay * self.global_params[k] if decay and k in self.global_params else v * scale
                for k, v in self.update.items()}

    def to(self, device: torch.device | str) -> "Observation":
        return replace(
            self,
            global_params={k: v.to(device) for k, v in self.global_params.items()},
            update={k: v.to(device) for k, v in self.update.items()},
            buffers={k: v.to(device) for k, v in self.buffers.items()},
            returned_buffers={k: v.to(device) for k, v in self.returned_buffers.items()},
        )


@dataclass
class Reconstruction:
    """An attack's output: images in model-input space, recovered labels, diagnostics."""

    images: torch.Tensor | None  # (N, C, H, W) normalized like model inputs; None: labels only
    labels: torch.Tensor | None = None  # (N,) class ids
    info: dict[str, Any] = field(default_factory=dict)  # iterations, final loss, ...


@dataclass(frozen=True)
class Truth:
    """Ground truth for scoring only: the client's private images and labels that round."""

    images: torch.Tensor  # (N, C, H, W) in model-input space
    labels: torch.Tensor  # (N,)
    indices: tuple[int, ...] = ()
    owners: tuple[int | str, ...] = ()  # the client each image came from (a sum's parts); () the update's own
