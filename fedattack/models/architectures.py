"""The architectures by name, their activations and weight initializations.

`MODELS` maps names (lenet, convnet, resnet18, mlp, or `module:fn` for your own) to
builders `fn(in_shape, num_classes, act, width=...) -> nn.Module`; a builder that takes a
`width` parameter declares that `model.width` means something for it (see `check_width`).
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch
import torch.nn as nn

from fedattack.errors import ConfigError
from fedattack.registry import Registry, plain_callable

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation", "model.activation")
ACTIVATIONS.register("sigmoid", nn.Sigmoid, doc="logistic sigmoid (DLG's LeNet)")
ACTIVATIONS.register("tanh", nn.Tanh, doc="hyperbolic tangent")
ACTIVATIONS.register("relu", nn.ReLU, doc="rectified linear unit")
ACTIVATIONS.register("leakyrelu", lambda: nn.LeakyReLU(0.2), doc="leaky ReLU, slope 0.2")

BUILDER_ARGS = ("in_shape", "num_classes", "act")  # a model builder's positional arguments


def own_module_class(obj: object) -> bool:
    """Whether `obj` is a model class of the user's own that takes no arguments, as Flower's
    quickstart `Net` is: it fixes its own input size and classes, and is built as `obj()`."""
    return (inspect.isclass(obj) and issubclass(obj, nn.Module) and not obj.__module__.startswith("torch")
            and plain_callable(obj, 0, "model") is None)


def _model_or_builder(obj: object) -> str | None:
    """`model.name`'s import paths: a builder fn(in_shape, num_classes, act, width=...), or a
    model class of the user's own that takes no arguments."""
    if own_module_class(obj):
        return None
    problem = plain_callable(obj, len(BUILDER_ARGS), "model", names=BUILDER_ARGS)
    if problem and "positional arguments" in problem:
        problem += ", nor is it a torch.nn.Module class of your own that takes none"
    return problem


MODELS: Registry[Callable[..., nn.Module]] = Registry("model", "model.name", accepts=_model_or_builder)

# name -> fn(model, scale): re-initializes a built model's weights in place
INITIALIZERS: Registry[Callable[[nn.Module, float], None]] = Registry("initialization", "model.init")


@INITIALIZERS.register("default", doc="the layers' own initialization (PyTorch's, torchvision's)")
def default_init(model: nn.Module, scale: float) -> None:
    pass


@INITIALIZERS.register("uniform", doc="every parameter ~ U(-init_scale, init_scale) (DLG's choice)")
def uniform_init(model: nn.Module, scale: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-scale, scale)


def check_width(name: str, width: int | None) -> None:
    """`model.width` must be positive, and only set for a model whose builder takes a width."""
    if width is None:
        return
    if width <= 0:
        raise ConfigError("model.width", f"must be > 0, got {width}")
    builder = MODELS.get(name)
    if own_module_class(builder) or "width" not in inspect.signature(builder).parameters:
        raise ConfigError("model.width", f"model '{name}' has no width parameter; leave model.width unset")


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


@MODELS.register("lenet", doc="LeNet of Zhu et al. (DLG): three 5x5 convolutions of `width` channels, one linear layer")
def lenet(in_shape, num_classes, act, width=12) -> nn.Module:
    body = nn.Sequential(
        *conv_block(in_shape[0], width, act, stride=2, k=5),
        *conv_block(width, width, act, stride=2, k=5),
        *conv_block(width, width, act, stride=1, k=5),
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


class QuickstartCNN(nn.Module):
    """The `Net` of Flower's quickstart-pytorch example, layer for layer and by name: conv
    6@5x5, 2x2 max-pool, conv 16@5x5, 2x2 max-pool, fully connected 120, 84, classes."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, act: Callable[[], nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(in_shape[0], 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.act = act()
        h, w = ((in_shape[1] - 4) // 2 - 4) // 2, ((in_shape[2] - 4) // 2 - 4) // 2
        if h < 1 or w < 1:
            raise ValueError(f"quickstart-cnn needs images of at least 16x16, got {in_shape[1]}x{in_shape[2]}")
        self.fc1 = nn.Linear(16 * h * w, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = x.flatten(1)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)


@MODELS.register("quickstart-cnn", doc="the CNN of Flower's quickstart-pytorch example (conv 6@5x5, max-pool, "
                                       "conv 16@5x5, max-pool, fc 120-84-classes; ReLU there)")
def quickstart_cnn(in_shape, num_classes, act) -> nn.Module:
    return QuickstartCNN(tuple(in_shape), num_classes, act)


@MODELS.register("resnet18", doc="torchvision ResNet-18 (its own widths) with a 3x3 stem for small images")
def resnet18(in_shape, num_classes, act) -> nn.Module:
    from torchvision.models import resnet18 as tv_resnet18  # torchvision loads only where it builds (1-2 s)

    m = tv_resnet18(num_classes=num_classes)
    m.conv1 = nn.Conv2d(in_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    if in_shape[1] <= 64:
        m.maxpool = nn.Identity()
    _swap_activation(m, act)
    return m


@MODELS.register("mlp", doc="two hidden fully connected layers of `width` units (the analytic attacks' target)")
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
