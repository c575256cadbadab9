"""Building the model a ModelSpec describes: architecture, initialization, extensions."""

from __future__ import annotations

import json

import torch
import torch.nn as nn

from fedattack.models import bottleneck, imprint  # noqa: F401 (register their extensions)
from fedattack.models.architectures import ACTIVATIONS, INITIALIZERS, MODELS
from fedattack.models.extensions import EXTENSIONS
from fedattack.threat import ModelSpec


def build_model(spec: ModelSpec, *, seed: int | None = None) -> nn.Module:
    """A fresh module of the architecture `spec` describes; a seed fixes its initial weights.

    A spec that carries the user's own module (`spec.module`) builds a copy of it (a template
    deep-copied, or the factory called after seeding); its weights are whatever the template
    holds or the factory draws: an Observation's global parameters replace them."""
    if seed is not None:
        torch.manual_seed(seed)
    if spec.module is not None:
        model = spec.module.build()
        if not isinstance(model, nn.Module):
            raise TypeError(f"the model factory {spec.name} returned {type(model).__name__}, not a torch.nn.Module")
    else:
        builder = MODELS.get(spec.name)
        extra = {} if spec.width is None else {"width": spec.width}
        model = builder(tuple(spec.in_shape), spec.num_classes, ACTIVATIONS.get(spec.activation), **extra)
    INITIALIZERS.get(spec.init)(model, spec.init_scale)
    materialize(model, tuple(spec.in_shape))
    for name, params_json in spec.extensions:
        model = EXTENSIONS.get(name)(model, tuple(spec.in_shape), spec.num_classes, **json.loads(params_json))
    return model


def materialize(model: nn.Module, in_shape: tuple[int, ...]) -> None:
    """Give lazy layers (nn.LazyLinear, nn.LazyConv2d, ...) their shapes now, with one forward
    pass of two blank images in eval mode (no BatchNorm statistics move), so that the model has
    every parameter before any is sent, copied or counted. A model without lazy layers is left
    untouched."""
    if not any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        return
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(2, *in_shape))  # a fresh model is on the default device
    model.train(was_training)


def float_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable floating-point parameters (what an update is computed over)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def batch_norm_layers(model: nn.Module) -> list[str]:
    """The names of the model's BatchNorm layers. A client trains them in training mode, on
    its batch's own statistics: every optimization attack then stays coarse on small batches
    (docs/attacks.md: why BatchNorm models stay coarse), and a low score is a lower bound."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_buffers()}
