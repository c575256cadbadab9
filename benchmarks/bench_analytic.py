"""analytic: exact input recovery from a fully connected layer (MLP, batch 1).

Figure: PSNR >= 60 dB on an MLP with one image, for one and several local steps; with the
PRECODE defense in force (when it is installed), the features fed to its bottleneck too.
Also the helper the other analytic benchmarks use to simulate a round.
"""

from __future__ import annotations

import time

import torch

from fedattack import config as fconfig
from fedattack.attacks import ATTACKS, AttackContext
from fedattack.gradient_attack import simulated_round
from fedattack.metrics import score
from fedattack.testing.cases import case_config


def observe(overrides: list[str], indices, clients: int = 1):
    """One simulated round (see fedattack.gradient_attack.simulated_round)."""
    obs, truth, exp = simulated_round(case_config(*overrides), indices, clients=clients)
    return obs, truth, exp


def run_attack(name: str, obs, overrides: list[str] = (), seed: int = 0):
    """(reconstruction, seconds) of attack `name` with its config overrides."""
    mode = ["server.mode=malicious"] if ATTACKS.get(name).needs_malicious else []
    params = fconfig.load(None, [f"audit.attacks=[{name}]", *mode, *overrides]).attack(name)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.perf_counter()
    rec = ATTACKS.get(name)(obs.to(device), params, AttackContext(device=device, seed=seed))
    return rec, time.perf_counter() - t0


def run(quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    rows = []
    cases = [("relu", 1), ("sigmoid", 1), ("sigmoid", 3)] if not quick else [("relu", 1), ("sigmoid", 3)]
    images = [0, 90] if not quick else [0]
    for act, steps in cases:
        for i in images:
            obs, truth, _ = observe(["model.name=mlp", f"model.activation={act}", "client.batch_size=1",
                                     f"client.local_steps={steps}"], [i])
            rec, sec = run_attack("analytic", obs)
            s = score(rec, truth, obs.data)
            rows.append({"model": f"mlp/{act}", "steps": steps, "image": i, "psnr_db": s.psnr, "ssim": s.ssim,
                         "labels": s.label_acc, "seconds": sec, ">= 60 dB": s.psnr >= 60})
    from fedattack.defenses import DEFENSES

    if "precode" in DEFENSES.names():
        obs, truth, exp = observe(["model.name=mlp", "client.batch_size=1", "client.local_steps=1",
                                   "client.defenses=[precode]"], [0])
        rec, sec = run_attack("analytic", obs)
        s = score(rec, truth, obs.data)
        rows.append({"model": "mlp+precode", "steps": 1, "image": 0, "psnr_db": s.psnr, "ssim": s.ssim,
                     "labels": s.label_acc, "seconds": sec, ">= 60 dB": s.psnr >= 60,
                     "features from": rec.info.get("feature_layer", "")})
    return rows
