"""Speed of the optimization attacks (DLG, iDLG, Inverting Gradients).

Rows, each measured in one run so ratios compare like with like:
- restarts: milliseconds per optimizer iteration for R restarts, a Python loop over
  restarts against one vmapped batch (torch.func), and the speedup;
- gradient: one matching loss + backward with torch.func.grad against autograd.grad
  with create_graph (the double-backward both need);
- attack: wall time per iteration of each attack at its defaults, per protocol (one
  step of one image; 2 steps of batch 2, the default config; 4 steps of batch 2), and
  the time a job at the default iteration count would take (Inverting Gradients'
  label-candidate screening included in proportion).
Medians of repeated timings on the device torch picks (CUDA when present), 1 CPU thread.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import replace

import torch

from fedattack.attacks import ATTACKS, AttackContext
from fedattack.attacks.engine import ce_loss, cosine_distance, functional_model, matching
from fedattack.attacks.optimize import Unknowns, batched_objective
from fedattack.testing.cases import observed_update

PROTOCOLS = {
    "1 step x 1 img": ("client.batch_size=1", "client.local_steps=1"),
    "2 steps x 2 img": ("client.batch_size=2", "client.local_steps=2"),
    "4 steps x 2 img": ("client.batch_size=2", "client.local_steps=4"),
}


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_ms(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _row(bench: str, protocol: str, case: str, baseline_ms: float | None, ms: float, **extra) -> dict:
    """One table row; speedup = baseline / measured."""
    row = {"bench": bench, "protocol": protocol, "case": case, "baseline_ms": "" if baseline_ms is None else baseline_ms,
           "ms": ms, "speedup": "" if baseline_ms is None else baseline_ms / ms}
    row["s_at_defaults"] = extra.get("s_at_defaults", "")
    return row


def restart_rows(quick: bool, device: torch.device) -> list[dict]:
    rows = []
    for proto in (["2 steps x 2 img"] if quick else ["1 step x 1 img", "2 steps x 2 img"]):
        obs, truth = observed_update("seed=0", *PROTOCOLS[proto])
        obs = obs.to(device)
        problem = matching(obs, device, "cosine", {"tv": 1e-6})
        n = len(truth.labels)
        for r in ([1, 4, 8] if quick else [1, 4, 8, 16, 32]):
            x = torch.randn((r, n, *obs.data.shape), device=device).requires_grad_(True)
            u = Unknowns(x=x, labels=truth.labels.to(device).repeat(r, 1))

            def vmapped():
                x.grad = None
                batched_objective(problem, u).sum().backward()

            def looped():
                x.grad = None
                sum(problem.objective(x[i], u.labels[i]) for i in range(r)).backward()

            reps = 3 if quick else 7
            loop_ms, vmap_ms = _median_ms(looped, device, reps), _median_ms(vmapped, device, reps)
            rows.append(_row("restarts", proto, f"R={r}: loop vs vmap", loop_ms, vmap_ms))
    return rows


def gradient_rows(quick: bool, device: torch.device) -> list[dict]:
    obs, truth = observed_update("seed=0", *PROTOCOLS["1 step x 1 img"])
    obs = obs.to(device)
    v = functional_model(obs, device)
    problem = matching(obs, device, "cosine")
    x = torch.randn_like(truth.images, device=device).requires_grad_(True)
    y = truth.labels.to(device)

    def func_grad():
        x.grad = None
        problem.mismatch(x, y).backward()

    def autograd_grad():
        x.grad = None
        params = {k: p.detach().requires_grad_(True) for k, p in v.params.items()}
        loss = ce_loss(v.logits(params, x), y)
        g = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        cosine_distance(dict(zip(params, g)), problem.target).backward()

    reps = 10 if quick else 30
    a, b = _median_ms(autograd_grad, device, reps), _median_ms(func_grad, device, reps)
    return [_row("gradient", "1 step x 1 img", "autograd.grad vs torch.func.grad", a, b)]


def attack_rows(quick: bool, device: torch.device) -> list[dict]:
    rows = []
    iterations = 20 if quick else 60
    for proto in (["1 step x 1 img", "2 steps x 2 img"] if quick else list(PROTOCOLS)):
        obs, _ = observed_update("seed=0", *PROTOCOLS[proto])
        obs = obs.to(device)
        for name in ("dlg", "idlg", "invgrad"):
            spec = ATTACKS.get(name)
            params = replace(spec.params(), iterations=iterations)
            t0 = time.perf_counter()
            spec(obs, params, AttackContext(device=device, seed=0))
            _sync(device)
            seconds = time.perf_counter() - t0
            rows.append(_row("attack", proto, f"{name} (restarts {getattr(params, 'restarts', 1)}), per iteration",
                             None, seconds * 1000 / iterations,
                             s_at_defaults=seconds * spec.params().iterations / iterations))
    return rows


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    device = _device()
    return restart_rows(quick, device) + gradient_rows(quick, device) + attack_rows(quick, device)
