"""Attacks for the interrupt tests: one returns at once, one sleeps until it is stopped."""

from __future__ import annotations

import time

import torch

from fedattack.attacks import register_attack
from fedattack.threat import Reconstruction


@register_attack("quick", paper="test plug-in")
def quick(obs, params, ctx):
    return Reconstruction(images=torch.zeros(1, *obs.data.shape))


@register_attack("slow", paper="test plug-in")
def slow(obs, params, ctx):
    time.sleep(600)
    return Reconstruction(images=torch.zeros(1, *obs.data.shape))
