"""Label recovery from the last layer's gradient, one registry entry per method.

Each method: `fn(obs: Observation, n: int) -> LongTensor (n,)`, the labels of the n
samples behind the update (as a multiset; order carries no meaning).
"""

from __future__ import annotations

from typing import Callable

import torch

from fedattack.registry import Registry
from fedattack.threat import Observation

LABELS: Registry[Callable[[Observation, int], torch.Tensor]] = Registry("label method", "audit.labels")


def last_layer(obs: Observation) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dW, db) of the classification layer, read as a gradient (-update / lr / steps)."""
    grad = obs.gradient_estimate()
    names = list(grad)
    w_name = next(n for n in reversed(names) if n.endswith("weight") and grad[n].ndim == 2)
    b_name = w_name[: -len("weight")] + "bias"
    return grad[w_name], grad.get(b_name)


@LABELS.register("idlg", doc="Zhao et al. (iDLG): the sign of the last layer's gradient, batch 1")
def idlg(obs: Observation, n: int) -> torch.Tensor:
    dw, db = last_layer(obs)
    score = db if db is not None else dw.sum(1)
    return torch.argsort(score)[:n] if n <= len(score) else score.argmin().repeat(n)


def recover_labels(obs: Observation, n: int, method: str = "auto") -> tuple[torch.Tensor, str]:
    """Labels for n samples; `auto` picks iDLG for one sample and the best count method else."""
    if method == "auto":
        method = "idlg" if n == 1 else next((m for m in ("llg", "yin") if m in LABELS.names()), "idlg")
    return LABELS.get(method)(obs, n), method
