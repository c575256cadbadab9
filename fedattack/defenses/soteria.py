"""`soteria`: Sun et al., Soteria: Provable Defense against Privacy Leakage in Federated
Learning from Representation Perspective, CVPR 2021.

The representation r is the input of the last fully connected layer (`fc`). For every
feature r_i the client measures how strongly the input determines it, summed over its
samples: s_i = sum_n ||d r_{n,i} / d x_n|| / |r_{n,i}|. The features whose r_i is large
relative to ||dr_i/dx|| (the smallest s_i) are the ones an inversion reconstructs best from
the fc gradient, so the `percent` fraction of features with the smallest s_i is pruned:
their columns of the fc weight update are zeroed (the authors' code prunes below the
percentile of s; here exactly round(percent * features) columns are pruned).

The mask is computed before training on the sent model and the round's samples (in the
paper's single-step setting that is the model the gradient is taken at) and applied to the
update. The attacker's model (`adapt`) zeroes the columns the observed update has zeroed.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import copy
import torch

from fedattack.defenses.base import DefenseContext, DefenseSpec, register_defense
from fedattack.errors import ConfigError
from fedattack.validate import check_range


@dataclass
class SoteriaParams:
    percent: float = 0.8  # fraction of the representation's features pruned from the fc gradient

    def validate(self, name: str) -> None:
        check_range(name, "percent", self.percent, lo=0.0, hi=1.0)


def representation_layer(model: torch.nn.Module) -> tuple[str, torch.nn.Linear]:
    """The classifier head, whose input is the representation Soteria prunes: the last Linear
    layer named `fc` (fedattack's Classifier heads, torchvision ResNets), else the model's last
    Linear layer (`fc3` of Flower's quickstart `Net`)."""
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    found = [(n, m) for n, m in linear if n.split(".")[-1] == "fc"] or linear
    if not found:
        raise ConfigError("client.defenses", "soteria needs a model with a fully connected (nn.Linear) classifier "
                                             "layer, whose input it prunes")
    return found[-1]


def soteria_check(model: torch.nn.Module, params: SoteriaParams | None = None) -> None:
    representation_layer(model)  # raises where the model has no Linear head


def feature_scores(model: torch.nn.Module, x: torch.Tensor, budget: int = 2 ** 25) -> torch.Tensor:
    """s_i = sum_n ||d r_{n,i}/d x_n|| / |r_{n,i}| for every feature i of the fc input.

    As in the authors' code, d r_{n,i}/d x_n is the gradient of sum_n r_{n,i} with respect to
    the batch, read per sample; the features are a vmap dimension of one vector-Jacobian product.
    BatchNorm normalizes with the batch's statistics, as in training, in a copy of the model that
    keeps none (its running statistics cannot be updated in place inside torch.func.vjp, and the
    extra pass must not move them)."""
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model = copy.deepcopy(model)
        torch.func.replace_all_batch_norm_modules_(model)
    _, fc = representation_layer(model)

    def representation(inputs: torch.Tensor) -> torch.Tensor:
        captured = {}
        handle = fc.register_forward_pre_hook(lambda m, args: captured.__setitem__("r", args[0]))
        try:
            model(inputs)
        finally:
            handle.remove()
        return captured["r"]

    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    try:
        r, vjp_fn = torch.func.vjp(representation, x.detach())
    finally:
        with torch.no_grad():  # the extra forward pass must not move BatchNorm statistics
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
    r = r.detach()
    n, f = r.shape
    chunk = max(1, min(f, budget // max(1, x.numel())))  # features per vmap call, ~budget floats
    norms = torch.empty(n, f, dtype=r.dtype, device=r.device)
    for start in range(0, f, chunk):
        idx = torch.arange(start, min(f, start + chunk), device=r.device)
        seeds = torch.zeros(len(idx), n, f, dtype=r.dtype, device=r.device)
        seeds[torch.arange(len(idx)), :, idx] = 1.0
        (jac,) = torch.func.vmap(vjp_fn)(seeds)  # (chunk, N, *input shape)
        norms[:, idx] = jac.flatten(2).norm(dim=2).T
    return (norms / (r.abs() + 1e-10)).sum(0).cpu()


@contextmanager
def _opacus_paused(model: torch.nn.Module):
    """Opacus's per-example hooks off while the mask is computed (when dpsgd wrapped the model first)."""
    if not hasattr(model, "disable_hooks"):
        yield
        return
    model.disable_hooks()
    saved = [(m, dict(m._backward_hooks)) for m in model._module.modules()]
    for m, _ in saved:  # full backward hooks cannot run under torch.func transforms
        m._backward_hooks.clear()
    try:
        yield
    finally:
        for m, hooks in saved:
            m._backward_hooks.update(hooks)
        model.enable_hooks()


def soteria_mask(scores: torch.Tensor, percent: float) -> torch.Tensor:
    """1 for kept features, 0 for the round(percent * F) features with the smallest scores."""
    f = scores.numel()
    k = int(round(percent * f))
    mask = torch.ones(f)
    if k:
        mask[torch.argsort(scores)[:k]] = 0.0
    return mask


def soteria_train(model, optimizer, loader, params: SoteriaParams, ctx: DefenseContext):
    module = getattr(model, "_module", model)  # the user's module behind Opacus's wrapper
    name, _ = representation_layer(module)
    with _opacus_paused(model):
        scores = feature_scores(module, ctx.images)
    ctx.state["soteria"] = (f"{name}.weight", soteria_mask(scores, params.percent))
    return model, optimizer, loader


def soteria_update(update, params: SoteriaParams, ctx: DefenseContext):
    key, mask = ctx.state["soteria"]
    update = dict(update)
    update[key] = update[key] * mask.to(update[key].device, update[key].dtype)[None, :]
    return update


def soteria_adapt(trial, observed, params: SoteriaParams, scale=None):
    out = dict(trial)
    for k, v in observed.items():
        if k.split(".")[-2:] == ["fc", "weight"] and k in out and v.dim() == 2:
            kept = (v != 0).any(dim=0).to(out[k].dtype)
            out[k] = out[k] * kept[None, :]
    return out


register_defense(DefenseSpec(
    name="soteria", params=SoteriaParams, where="update", main_param="percent", on_train=soteria_train,
    on_update=soteria_update, adapt=soteria_adapt, keeps_signs=lambda params: True,  # zeroes entries
    check_model=soteria_check,
    paper="Sun et al., Soteria: Provable Defense against Privacy Leakage in Federated Learning from "
          "Representation Perspective, CVPR 2021"))
