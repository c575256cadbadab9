"""A server-side attack plug-in that records every process importing it: the server and the
attack workers may, Flower's client actors must not (clients never import server plug-ins)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from fedattack.attacks import AttackSpec, NoParams
from fedattack.threat import Reconstruction

MARKER_ENV = "FEDATTACK_TEST_IMPORT_MARKERS"


def _actor_id() -> str | None:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_actor_id()
    except Exception:  # noqa: BLE001 - outside Ray
        return None
    return None


if os.environ.get(MARKER_ENV):
    Path(os.environ[MARKER_ENV], f"{os.getpid()}.json").write_text(json.dumps({"pid": os.getpid(),
                                                                               "actor": _actor_id()}))


def _blank(obs, params, ctx):
    return Reconstruction(images=torch.zeros((1, *obs.data.shape)), labels=torch.zeros(1, dtype=torch.long))


# an attack by import path only (not registered by name), so the module can be imported again
quick = AttackSpec("quick_marker", _blank, NoParams, "test plug-in")
