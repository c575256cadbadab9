"""A user's own model as a ModelSpec: the template or factory, and what its layers say about
the data (input channels and size, number of classes) when the user does not say it."""

from __future__ import annotations

import copy
import inspect
from typing import Callable

import torch
import torch.nn as nn

from fedattack.errors import ConfigError, first_line
from fedattack.threat import ModelSpec, ModuleSource

# input sizes tried, common ones first, when the model does not fix its input size
COMMON_SIZES = (32, 28, 64, 224, 16, 8, 96, 128, 256, 112)


def module_source(model: nn.Module | Callable[[], nn.Module]) -> ModuleSource:
    """The user's model as a ModuleSource: an nn.Module is a template, a callable a factory."""
    if isinstance(model, nn.Module):
        return ModuleSource(template=model)
    if inspect.isclass(model) and issubclass(model, nn.Module):
        return ModuleSource(factory=model)  # the class itself, called without arguments
    if callable(model) and not inspect.isclass(model):
        return ModuleSource(factory=model)
    raise ConfigError("model", f"expected a torch.nn.Module or a factory returning one, got {type(model).__name__}")


def user_model_spec(model: nn.Module | Callable[[], nn.Module], *, in_shape: tuple[int, int, int] | None = None,
                    num_classes: int | None = None) -> ModelSpec:
    """A ModelSpec for the user's own model; input shape and classes from the model's layers
    where the caller does not give them (see `infer_input_shape`, `infer_num_classes`)."""
    source = module_source(model)
    try:
        built = source.build()
    except Exception as exc:  # the user's own factory: its error, named as the argument
        raise ConfigError("model", f"building it raised {type(exc).__name__}: {first_line(exc)}") from exc
    if not isinstance(built, nn.Module):
        raise ConfigError("model", f"the factory returned {type(built).__name__}, not a torch.nn.Module")
    module = copy.deepcopy(built).cpu().eval()
    if num_classes is None:
        num_classes = infer_num_classes(module)
    if in_shape is None:
        in_shape = infer_input_shape(module, num_classes)
    else:
        given = in_shape
        try:
            in_shape = tuple(int(v) for v in in_shape) if not isinstance(in_shape, str) else ()
        except (TypeError, ValueError):
            in_shape = ()
        if len(in_shape) != 3 or min(in_shape) < 1:
            raise ConfigError("input_shape", f"expected (channels, height, width), got {given!r}")
        problem = _forward_problem(module, in_shape, num_classes)
        if problem and problem.startswith(RETURNS):
            raise _output_error(problem, in_shape)
        if problem:
            raise ConfigError("input_shape", f"the model does not take inputs of shape {in_shape}: {problem}")
    cls = type(module)
    return ModelSpec(name=f"{cls.__module__}:{cls.__qualname__}", activation="", num_classes=int(num_classes),
                     in_shape=in_shape, module=source)


def infer_num_classes(module: nn.Module) -> int:
    """The output size of the model's last linear layer."""
    linear = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise ConfigError("num_classes", "the model has no nn.Linear layer to read the number of classes from; "
                                         "give num_classes")
    return int(linear[-1].out_features)


def infer_input_shape(module: nn.Module, num_classes: int) -> tuple[int, int, int]:
    """(C, H, W) from the first layer (channels of a Conv2d, or a Linear's inputs as a square
    image of 1 or 3 channels) and the square sizes the model accepts; where several sizes fit
    (pooling rounds down), the first of the common image sizes among them."""
    first = next((m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is None:
        raise ConfigError("input_shape", "the model has no Conv2d or Linear layer to read its input from; "
                                         "give input_shape=(channels, height, width)")
    if isinstance(first, nn.Linear):
        for c in (1, 3):
            side = round((first.in_features / c) ** 0.5)
            if c * side * side == first.in_features and not _forward_problem(module, (c, side, side), num_classes):
                return (c, side, side)
        raise ConfigError("input_shape", f"cannot read an image shape off the first Linear layer "
                                         f"({first.in_features} inputs); give input_shape=(channels, height, width)")
    c = int(first.in_channels)
    sizes = sorted(set(COMMON_SIZES) | set(range(4, 65)))
    problems = {s: _forward_problem(module, (c, s, s), num_classes) for s in sizes}  # one forward per size
    fits = [s for s, problem in problems.items() if not problem]
    if not fits:
        ran = next((s for s in COMMON_SIZES if (problems[s] or "").startswith(RETURNS)), None)
        if ran is not None:  # inputs fit; what comes out does not
            raise _output_error(problems[ran], (c, ran, ran))
        raise ConfigError("input_shape", f"no square input of {c} channels (4 to 256 pixels) fits the model; "
                                         "give input_shape=(channels, height, width)")
    common = [s for s in COMMON_SIZES if s in fits]
    side = common[0] if common else fits[0]
    return (c, side, side)


RETURNS = "it returns "  # how _forward_problem starts a problem with the model's output


def _output_error(problem: str, shape: tuple[int, ...]) -> ConfigError:
    """The model runs on `shape` but its output is not (batch, num_classes) logits: a wrong
    class count names num_classes; anything but a tensor of logits names the model."""
    field = "num_classes" if problem.startswith(RETURNS + "(") else "model"
    what = ("give the number of classes its logits have" if field == "num_classes"
            else "forward must return one tensor of logits, (batch, classes)")
    return ConfigError(field, f"on inputs of shape {tuple(shape)} {problem}; {what}")


def _forward_problem(module: nn.Module, shape: tuple[int, int, int], num_classes: int) -> str | None:
    """Why a batch of two zero images of `shape` does not give (2, num_classes) logits (None if it does)."""
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *shape))
    except Exception as exc:  # noqa: BLE001 - any failure means the shape does not fit
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return f"it returns {got}, not (batch, {num_classes}) logits"
    return None
