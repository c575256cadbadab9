"""Model builders: one function per architecture, shared blocks, activation by name.

`build_model(spec)` builds from a `ModelSpec`; the registry `MODELS` maps names
(lenet, convnet, resnet18, mlp, or `module:fn` for your own) to builders with the
signature `fn(in_shape, num_classes, act, width) -> nn.Module`.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from fedattack.registry import Registry

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leakyrelu": lambda: nn.LeakyReLU(0.2),
}

MODELS: Registry[Callable[..., nn.Module]] = Registry("model", "model.name")

# name -> fn(model, in_shape, num_classes, **params) -> nn.Module: wraps a built model
# (a defense's PRECODE bottleneck, a malicious server's imprint block).
EXTENSIONS: Registry[Callable[..., nn.Module]] = Registry("model extension", "model.extensions")


def _flat_features(body: nn.Module, in_shape: tuple[int, int, int]) -> int:
    with torch.no_grad():
        return int(body(torch.zeros(1, *in_shape)).flatten(1).shape[1])


def conv_block(cin: int, cout: int, act: Callable[[], nn.Module], stride: int = 1, k: int = 3,
               norm: bool = False) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)]
    if norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(act())
    return layers


class Classifier(nn.Module):
    """A feature body followed by a linear head (the layer label-recovery reads)."""

    def __init__(self, body: nn.Module, in_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.body = body
        self.fc = nn.Linear(_flat_features(body, in_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


@MODELS.register("lenet", doc="LeNet of Zhu et al. (DLG): three 5x5 convolutions, one linear layer")
def lenet(in_shape, num_classes, act, width=12) -> nn.Module:
    w = 12
    body = nn.Sequential(
        *conv_block(in_shape[0], w, act, stride=2, k=5),
        *conv_block(w, w, act, stride=2, k=5),
        *conv_block(w, w, act, stride=1, k=5),
    )
    return Classifier(body, in_shape, num_classes)


@MODELS.register("convnet", doc="ConvNet of Geiping et al.: conv-BN-act blocks of width w, 2w, 4w with pooling")
def convnet(in_shape, num_classes, act, width=32) -> nn.Module:
    w = width
    body = nn.Sequential(
        *conv_block(in_shape[0], w, act, norm=True),
        *conv_block(w, 2 * w, act, norm=True),
        nn.MaxPool2d(2),
        *conv_block(2 * w, 2 * w, act, norm=True),
        *conv_block(2 * w, 4 * w, act, norm=True),
        nn.MaxPool2d(2),
        *conv_block(4 * w, 4 * w, act, norm=True),
        nn.AdaptiveAvgPool2d(1),
    )
    return Classifier(body, in_shape, num_classes)


@MODELS.register("resnet18", doc="torchvision ResNet-18 with a 3x3 stem for small images")
def resnet18(in_shape, num_classes, act, width=64) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18

    m = tv_resnet18(num_classes=num_classes)
    m.conv1 = nn.Conv2d(in_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    if in_shape[1] <= 64:
        m.maxpool = nn.Identity()
    _swap_activation(m, act)
    return m


@MODELS.register("mlp", doc="two hidden fully connected layers (the analytic attacks' target)")
def mlp(in_shape, num_classes, act, width=256) -> nn.Module:
    d = in_shape[0] * in_shape[1] * in_shape[2]
    body = nn.Sequential(nn.Flatten(), nn.Linear(d, width), act(), nn.Linear(width, width), act())
    return Classifier(body, in_shape, num_classes)


def _swap_activation(module: nn.Module, act: Callable[[], nn.Module]) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU):
            setattr(module, name, act())
        else:
            _swap_activation(child, act)


def build_model(spec, seed: int | None = None) -> nn.Module:
    """Build the model of a ModelSpec; a seed fixes its initial weights."""
    builder = MODELS.get(spec.name)
    if seed is not None:
        torch.manual_seed(seed)
    extra = {} if spec.width is None else {"width": spec.width}
    model = builder(tuple(spec.in_shape), spec.num_classes, ACTIVATIONS[spec.activation], **extra)
    if spec.init == "uniform":
        with torch.no_grad():
            for p in model.parameters():
                p.uniform_(-spec.init_scale, spec.init_scale)
    if spec.extensions:  # extensions are registered by attack and defense modules (also in Ray workers)
        import fedattack.attacks  # noqa: F401
        import fedattack.defenses  # noqa: F401
    for name, params_json in spec.extensions:
        import json

        model = EXTENSIONS.get(name)(model, tuple(spec.in_shape), spec.num_classes, **json.loads(params_json))
    return model


def float_params(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable floating-point parameters (what an update is computed over)."""
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_buffers()}
