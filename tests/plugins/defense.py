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
    if len(ctx.partition) > 2:  # not the server's check of the hooks on 2 images before the run starts
        raise ValueError("this client's images cannot be read")
    return x, y


# a client whose training always fails, as one with broken data does
breaks_training = DefenseSpec(name="breaks-training", params=NoParams, paper="a test's own", where="training",
                              on_batch=_unreadable)


@dataclass
class ScaleParams:
    factor: float = 0.5

    def validate(self, name: str) -> None:
        if not 0 < self.factor <= 1:
            from fedattack.errors import ConfigError

            raise ConfigError(f"{name}.factor", f"must be in (0, 1], got {self.factor}")


# a defense with a parameter, for sweeps over a plug-in's section by its import path
scale = DefenseSpec(name="scale", params=ScaleParams, paper="a test's own", where="update",
                    on_update=lambda update, params=None, ctx=None: {k: params.factor * v for k, v in update.items()})


def _raises(update, params=None, ctx=None):
    raise ZeroDivisionError("division by zero")


def _loses_a_tensor(update, params=None, ctx=None):
    return dict(list(update.items())[1:])


def _flattens_one(update, params=None, ctx=None):
    first = next(iter(update))
    return {k: v.flatten() if k == first else v for k, v in update.items()}


def _drops_a_label(x, y, params=None, ctx=None):
    return x, y[:-1]


# defenses whose hooks break their contract on any client: refused before a run starts
raises_on_update = DefenseSpec(name="raises", params=NoParams, paper="a test's own", where="update",
                               on_update=_raises)
loses_a_tensor = DefenseSpec(name="loses-a-tensor", params=NoParams, paper="a test's own", where="update",
                             on_update=_loses_a_tensor)
drops_a_label = DefenseSpec(name="drops-a-label", params=NoParams, paper="a test's own", where="training",
                            on_batch=_drops_a_label)
flattens_a_tensor = DefenseSpec(name="flattens-a-tensor", params=NoParams, paper="a test's own", where="update",
                                on_update=_flattens_one)
