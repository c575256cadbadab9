"""A defense of a user's own, configured by import path (`client.defenses=[tests.plugins.defense:drop_head]`):
it withholds the classifier's weight update, and its `adapt` hook lets adaptive attacks model that."""

from dataclasses import dataclass

import torch

from fedattack.defenses import DefenseSpec


@dataclass
class NoParams:
    pass


def _drop(update, params=None, ctx=None):
    return {k: torch.zeros_like(v) if k == "fc.weight" else v for k, v in update.items()}


drop_head = DefenseSpec(name="drop-head", params=NoParams, paper="a test's own", where="update", on_update=_drop,
                        adapt=lambda trial, observed, p, scale=None: _drop(trial, p))


def _unreadable(x, y, params=None, ctx=None):
    raise ValueError("this client's images cannot be read")


# a client whose training always fails, as one with broken data does
breaks_training = DefenseSpec(name="breaks-training", params=NoParams, paper="a test's own", where="training",
                              on_batch=_unreadable)
