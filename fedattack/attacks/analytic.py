"""Exact input recovery from a fully connected layer (Phong et al. 2017; Geiping et al. 2020).

For a linear layer z = W h + b seen by one sample, dL/dW = (dL/dz) h^T and dL/db = dL/dz,
so every row i with dL/db_i != 0 gives the layer's input exactly: h = dW_i / db_i. Over all
rows the least-squares estimate h = sum_i db_i dW_i / sum_i db_i^2 weighs rows by how much
signal they carry, which is what makes the read-off robust to noise and float rounding.
This holds for any number of local steps as long as the layer's input does not change
between them, which is true of the first layer (its input is the image itself).

The layer is found by parameter names: the first 2-D `*.weight` whose input size is the
flattened image (for `model.name=mlp`, the first hidden layer), and, when the model carries
PRECODE's bottleneck (Scheliga et al., WACV 2022), `precode.encoder`, whose input is the
feature vector the bottleneck was meant to hide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from fedattack.attacks.base import AttackContext, read_gradient, register_attack
from fedattack.attacks.engine import linear_layers
from fedattack.attacks.engine import solve_input as read_input
from fedattack.attacks.labels import recover_labels
from fedattack.validate import check_range
from fedattack.errors import AttackFailure, ConfigError
from fedattack.threat import Observation, Reconstruction

PRECODE_ENCODER = "precode.encoder"


@dataclass
class AnalyticParams:
    layer: str = "auto"  # auto: first fully connected layer on the flattened input; or a layer name, e.g. body.1
    feature_layer: str = "auto"  # auto: precode.encoder when present; "none"; or a layer name
    rel_threshold: float = 1e-6  # rows with |db_i| below this fraction of max |db| are left out

    def validate(self, name: str) -> None:
        check_range(name, "rel_threshold", self.rel_threshold, 0, 1)
        for key in ("layer", "feature_layer"):
            check_layer_name(name, key, getattr(self, key))


def check_layer_name(name: str, key: str, value: Any) -> None:
    """A layer parameter is 'auto' or a layer's name: a string, not empty."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}.{key}", f"must be 'auto' or a layer name, got {value!r}")


def layer_check(attack: str, keys: tuple[str, ...], words: tuple[str, ...]) -> Callable[[torch.nn.Module, Any], None]:
    """An attack's `check_model`: each parameter of `keys` names one of `words` or a fully
    connected layer with a bias of the model the server sends (under a malicious server, its
    extension's names)."""
    def check(model: torch.nn.Module, params: Any) -> None:
        names = linear_layers(dict(model.named_parameters()))
        for key in keys:
            value = getattr(params, key)
            if value not in words and value not in names:
                raise ConfigError(f"{attack}.{key}", f"no fully connected layer '{value}' with weight and bias in "
                                                     f"the model; allowed: {', '.join([*words, *names])}")

    return check


check_layers = layer_check("analytic", ("layer", "feature_layer"), ("auto", "none"))


def input_layer(obs: Observation) -> str | None:
    """The fully connected layer whose input is the flattened image, if any: the model's first
    layer with parameters, taking as many inputs as the image has values (a later layer of that
    fan-in reads features, as one after a convolution and a pooling can)."""
    d = math.prod(obs.data.shape)
    first = next(iter(obs.global_params), "")
    return next((n for n in linear_layers(obs.global_params)
                 if obs.global_params[n + ".weight"].shape[1] == d and first.startswith(n + ".")), None)


def layer_gradient(obs: Observation, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    grad = read_gradient(obs, "analytic")
    if layer + ".weight" not in grad or layer + ".bias" not in grad:
        raise AttackFailure(f"no fully connected layer '{layer}' with weight and bias; "
                         f"linear layers: {', '.join(linear_layers(obs.global_params)) or 'none'}")
    return grad[layer + ".weight"].double(), grad[layer + ".bias"].double()


def solve_input(dw: torch.Tensor, db: torch.Tensor, rel_threshold: float = 1e-6) -> tuple[torch.Tensor, int]:
    """Least-squares h with dW ~= db h^T over the rows that carry signal; (h, rows used)."""
    solved = read_input(dw, db, rel_threshold)
    if solved is None:
        raise AttackFailure("the layer's bias gradient is zero: nothing to read the input from")
    return solved


def _resolve(name: str, auto: str | None) -> str | None:
    return None if name == "none" else auto if name == "auto" else name


@register_attack("analytic", params=AnalyticParams,
                 paper="Phong et al., Privacy-Preserving Deep Learning via Additively Homomorphic Encryption, "
                       "IEEE TIFS 2018 (arXiv 2017); Geiping et al., Inverting Gradients, NeurIPS 2020 (Sec. 4)",
                 scope="client", check_model=check_layers)
def analytic(obs: Observation, params: AnalyticParams, ctx: AttackContext) -> Reconstruction:
    names = linear_layers(obs.global_params)
    precode = next((n for n in names if n.endswith(PRECODE_ENCODER)), None)
    image_layer = _resolve(params.layer, input_layer(obs))
    feature_layer = _resolve(params.feature_layer, precode)
    if image_layer is None and feature_layer is None:
        first, w = next(iter(obs.global_params.items()), ("", None))
        if (params.layer == "auto" and first.endswith(".weight") and w is not None and w.ndim == 2
                and w.shape[1] == math.prod(obs.data.shape)):
            raise AttackFailure(f"the first layer '{first[:-len('.weight')]}' has no bias, and analytic reads the "
                                "image off the bias gradient (dW = db x^T)")
        raise AttackFailure("analytic needs a fully connected layer on the flattened input (as the built-in mlp has) "
                            "or a named feature layer (analytic.feature_layer)")
    info: dict = {}
    images = None
    if image_layer is not None:
        dw, db = layer_gradient(obs, image_layer)
        h, used = solve_input(dw, db, params.rel_threshold)
        if h.numel() != math.prod(obs.data.shape):
            raise AttackFailure(f"layer '{image_layer}' takes {h.numel()} inputs, not an image of shape {obs.data.shape}")
        images = h.float().view(1, *obs.data.shape)
        info.update(layer=image_layer, rows_used=used)
    if feature_layer is not None:
        dw, db = layer_gradient(obs, feature_layer)
        h, used = solve_input(dw, db, params.rel_threshold)
        info.update(feature_layer=feature_layer, feature_rows_used=used, features=h.float()[None])
    labels, method = recover_labels(obs, 1, ctx.labels)
    info["label_method"] = method
    return Reconstruction(images=images, labels=labels, info=info)
