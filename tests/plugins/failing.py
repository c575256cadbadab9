"""Attacks that fail on purpose: a failed attack must be recorded, never stop the audit.

`boom` and `nan` fail the way an attack may (an AttackFailure, a diverged reconstruction);
`bug` has a programming error, which strict jobs raise and other jobs record as an error."""

from __future__ import annotations

import torch

from fedattack.attacks import register_attack
from fedattack.errors import AttackFailure
from fedattack.threat import Reconstruction


@register_attack("boom", paper="test plug-in")
def boom(obs, params, ctx):
    raise AttackFailure("the optimizer exploded")


@register_attack("nan", paper="test plug-in")
def nan(obs, params, ctx):
    return Reconstruction(images=torch.full((1, *obs.data.shape), float("nan")))


@register_attack("bug", paper="test plug-in")
def bug(obs, params, ctx):
    return Reconstruction(images=obs.update["no such layer"])


@register_attack("stuck", paper="test plug-in")
def stuck(obs, params, ctx):
    import time

    time.sleep(120)  # abandoned at audit.job_timeout; the thread is a daemon
    raise AttackFailure("woke up")


@register_attack("one-argument", paper="test plug-in")
def one_argument(obs):  # an attack is called with (obs, params, ctx): refused where the config is read
    raise AssertionError("never called")
