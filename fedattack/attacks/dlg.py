"""DLG (Zhu et al., NeurIPS 2019) and iDLG (Zhao et al., 2020).

DLG optimizes a dummy image and a dummy soft label with L-BFGS so that their gradient
matches the observed one in squared L2. iDLG first reads the labels off the last layer's
gradient and optimizes the images only. Both read the update as one gradient,
-update / (lr * steps), which is exact for a single local step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedattack.attacks.base import AttackContext, register_attack
from fedattack.attacks.common import DISTANCES, gradient, num_images, victim
from fedattack.attacks.labels import recover_labels
from fedattack.config import check_choice, check_range
from fedattack.threat import Observation, Reconstruction


@dataclass
class DLGParams:
    iterations: int = 300
    optimizer: str = "lbfgs"  # lbfgs | adam
    loss: str = "l2"  # l2 | cosine
    lr: float = 1.0  # L-BFGS step size (Adam: use ~0.1)
    restarts: int = 1

    def validate(self, name: str) -> None:
        check_range(name, "iterations", self.iterations, 1)
        check_choice(name, "optimizer", self.optimizer, ["lbfgs", "adam"])
        check_choice(name, "loss", self.loss, sorted(DISTANCES))
        check_range(name, "lr", self.lr, 0, lo_open=True)
        check_range(name, "restarts", self.restarts, 1)


def _optimize(obs: Observation, params: DLGParams, ctx: AttackContext, labels: torch.Tensor | None) -> Reconstruction:
    v = victim(obs, ctx.device)
    target = {k: g.detach() for k, g in obs.gradient_estimate().items()}
    dist = DISTANCES[params.loss]
    n, shape, c = num_images(obs), obs.data.shape, obs.data.num_classes
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for r in range(params.restarts):
        gen = ctx.generator(r)
        x = torch.randn((n, *shape), generator=gen).to(ctx.device).requires_grad_(True)
        y_logit = torch.randn((n, c), generator=gen).to(ctx.device).requires_grad_(True)
        variables = [x] if labels is not None else [x, y_logit]
        if params.optimizer == "lbfgs":
            opt = torch.optim.LBFGS(variables, lr=params.lr, max_iter=1, history_size=100, line_search_fn=None)
        else:
            opt = torch.optim.Adam(variables, lr=params.lr)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            y = labels if labels is not None else torch.softmax(y_logit, -1)
            loss = dist(gradient(v, v.params_with_grad, x, y), target)
            loss.backward()
            return loss

        v.params_with_grad = {k: p.detach().requires_grad_(True) for k, p in v.params.items()}
        loss_value = float("inf")
        for _ in range(params.iterations):
            loss = opt.step(closure)
            loss_value = float(loss)
            if not torch.isfinite(loss):
                break
        if torch.isfinite(torch.tensor(loss_value)) and (best is None or loss_value < best[0]):
            y_out = labels if labels is not None else y_logit.detach().argmax(-1)
            best = (loss_value, x.detach(), y_out)
    if best is None:
        raise FloatingPointError("every restart diverged")
    return Reconstruction(images=best[1], labels=best[2], info={"loss": best[0], "iterations": params.iterations})


@register_attack("dlg", params=DLGParams, paper="Zhu et al., Deep Leakage from Gradients, NeurIPS 2019")
def dlg(obs: Observation, params: DLGParams, ctx: AttackContext) -> Reconstruction:
    return _optimize(obs, params, ctx, labels=None)


@register_attack("idlg", params=DLGParams,
                 paper="Zhao et al., iDLG: Improved Deep Leakage from Gradients, 2020 (labels + DLG)")
def idlg(obs: Observation, params: DLGParams, ctx: AttackContext) -> Reconstruction:
    labels, method = recover_labels(obs, num_images(obs), ctx.labels)
    rec = _optimize(obs, params, ctx, labels=labels.to(ctx.device))
    rec.info["label_method"] = method
    return rec
