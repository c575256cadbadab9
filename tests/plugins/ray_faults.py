"""Attacks for the Ray cluster tests: one reports where it ran, two kill their own worker.

They act only inside a Ray worker process and only with `marker_dir` set; anywhere else
`where` returns a blank guess and the other two raise, like any failing attack.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fedattack.attacks import register_attack
from fedattack.threat import Reconstruction


@dataclass
class FaultParams:
    marker_dir: str = ""  # where attempts are recorded
    hold: float = 0.0  # seconds to stay busy (to observe how many run at once)


def _in_ray_worker() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    except Exception:  # noqa: BLE001
        return False


def _armed(params: FaultParams) -> bool:
    return bool(params.marker_dir) and _in_ray_worker()


def _blank(obs) -> Reconstruction:
    return Reconstruction(images=torch.zeros((1, *obs.data.shape)), labels=torch.zeros(1, dtype=torch.long))


def _kill_own_worker() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@register_attack("where", params=FaultParams, paper="test plug-in: records the Ray node and resources it ran with")
def where(obs, params: FaultParams, ctx):
    if _armed(params):
        import ray

        rc = ray.get_runtime_context()
        node = rc.get_node_id()
        started = time.time()
        time.sleep(params.hold)
        record = {"node": node, "assigned": rc.get_assigned_resources(), "pid": os.getpid(),
                  "node_resources": next((n["Resources"] for n in ray.nodes() if n["NodeID"] == node), {}),
                  "started": started, "ended": time.time()}
        (Path(params.marker_dir) / f"where-{ctx.seed}.json").write_text(json.dumps(record))
    return _blank(obs)


@register_attack("die_once", params=FaultParams, paper="test plug-in: its first attempt kills its worker")
def die_once(obs, params: FaultParams, ctx):
    if _armed(params):
        first = Path(params.marker_dir) / f"die_once-{ctx.seed}"
        if not first.exists():
            first.write_text(str(os.getpid()))
            _kill_own_worker()
    return _blank(obs)


@register_attack("die_always", params=FaultParams, paper="test plug-in: every attempt kills its worker")
def die_always(obs, params: FaultParams, ctx):
    if _armed(params):
        (Path(params.marker_dir) / f"die_always-{ctx.seed}-{os.getpid()}").write_text("")
        _kill_own_worker()
    raise RuntimeError("die_always kills its worker only inside the Ray tests")
