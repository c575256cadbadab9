"""A user's own aggregate-scope attack, plugged in by import path: it fails unless the
observation it receives is an aggregate over several clients, and returns the mean image."""

from __future__ import annotations

import torch

from fedattack.attacks import register_attack
from fedattack.threat import Reconstruction


@register_attack("aggregate_probe", paper="test plug-in", scope="aggregate")
def aggregate_probe(obs, params, ctx):
    if obs.num_clients < 2:
        raise AssertionError(f"expected an aggregate, got a single update (num_clients={obs.num_clients})")
    mean = torch.tensor(obs.data.mean).view(1, -1, 1, 1)
    x01 = torch.full((obs.protocol.num_examples, *obs.data.shape), 0.5) + 0 * mean
    return Reconstruction(images=obs.data.normalize(x01), info={"num_clients": obs.num_clients})
