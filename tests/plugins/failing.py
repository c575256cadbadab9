"""Attacks that fail on purpose: a failed attack must be recorded, never stop the audit."""

from __future__ import annotations

import torch

from fedattack.attacks import register_attack
from fedattack.threat import Reconstruction


@register_attack("boom", paper="test plug-in")
def boom(obs, params, ctx):
    raise RuntimeError("the optimizer exploded")


@register_attack("nan", paper="test plug-in")
def nan(obs, params, ctx):
    return Reconstruction(images=torch.full((1, *obs.data.shape), float("nan")))
