"""realistic: leakage where real clients train: several images over several local steps.

This module holds the cases of three benchmarks (each runnable alone, in parallel processes):
`realistic` (local steps: LeNet on faces and photos, Flower's quickstart CNN on photos and, 4
images in 2 steps, on faces), `realistic_epochs` (16 images, 2 local epochs of batch 4, on
ConvNet, the quickstart CNN and LeNet) and `dimitrov` (Dimitrov et al.'s protocol at small scale:
50 images, batch 10, 1 and 5 epochs, ConvNet). Other benchmarks run parts or variants of them.

Each case is a client update produced by fedattack's own client code (fedattack.client.train,
reshuffling its data every epoch) on an embedded dataset, then attacked as the audit would:
`invgrad` (Geiping et al.'s multi-step attack) and `fedavg` (Dimitrov et al., TMLR 2022) at
their defaults, and each calibrated (`audit.calibrate`; the `dimitrov` cases run the defaults
only): the attacker simulates the same protocol on the test split, which it holds, tunes the
attack there, and attacks the victims with the tuned values. Victims are drawn from the
training split by seed, the same for every attack.

Every row: the size of the problem (update entries against unknown pixels: the update of an
8-image LeNet client holds fewer numbers than the pixels it hides), mean PSNR over victims
and seeds, the flat-image baseline on the same victims (the best constant image per victim)
and the margin over it, SSIM, images recovered (SSIM >= 0.5 and above the best flat guess's
SSIM: a flat grey scores SSIM 0.9 on some smooth photos), images with SSIM >= 0.5 whatever a
flat guess scores (the common definition; rows measured before it was added show "-"), label
accuracy, seconds per job, and for calibrated rows the calibration's one-off cost (per model,
protocol and defense).

On a CPU the ConvNet is run at width 8 and the Dimitrov-scale cases on 16 px images
(`FEDATTACK_FULL=1`, or a GPU, runs them at width 32 and 32 px): a width-32 ConvNet iteration
over 16 images and 2 epochs takes about 2-5 s on one core, at 2000 to 4000 iterations per attack.
FEDATTACK_PLAN_CASES (positions in a benchmark's list of cases, e.g. `1,2`) and
FEDATTACK_PLAN_ATTACKS (e.g. `fedavg,invgrad`, in that order) run part of a benchmark where
device time is scarce.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from fedattack import config as fconfig
from fedattack.attacks import ATTACKS, AttackContext
from fedattack.attacks.calibrate import calibrate, judges
from fedattack.experiment import build
from fedattack.metrics.images import match_and_score, psnr, ssim
from fedattack.metrics.labels import label_accuracy
from fedattack.schema import AuditConfig
from fedattack.testing.cases import observed_update


@dataclass(frozen=True)
class Case:
    name: str
    overrides: tuple[str, ...]
    images: int
    seeds: tuple[int, ...] = (0, 1, 2)


def full_scale() -> bool:
    return torch.cuda.is_available() or os.environ.get("FEDATTACK_FULL") == "1"


def cases(quick: bool) -> list[Case]:
    width = "model.width=32" if full_scale() else "model.width=8"
    small = "data.image_size=32" if full_scale() else "data.image_size=16"
    epochs = ("client.local_steps=0", "client.local_epochs=2", "client.batch_size=4")
    out = [
        Case("8 img, 4 steps of 2, LeNet sigmoid, lfw-subset",
             ("data.name=lfw-subset", "model.name=lenet", "client.local_steps=4", "client.batch_size=2"), 8),
        Case("8 img, 4 steps of 2, LeNet sigmoid, photos",
             ("data.name=photos", "model.name=lenet", "client.local_steps=4", "client.batch_size=2"), 8),
        Case("16 img, 2 epochs of 4, ConvNet, photos",
             ("data.name=photos", "model.name=convnet", "model.activation=relu", width, *epochs), 16),
        Case("16 img, 2 epochs of 4, quickstart CNN, photos",
             ("data.name=photos", "model.name=quickstart-cnn", "model.activation=relu", *epochs), 16),
        Case("16 img, 2 epochs of 4, LeNet sigmoid, photos",
             ("data.name=photos", "model.name=lenet", *epochs), 16),
        Case("1 img, 1 step, quickstart CNN, photos",
             ("data.name=photos", "model.name=quickstart-cnn", "model.activation=relu", "client.local_steps=1",
              "client.batch_size=1"), 1, seeds=tuple(range(8))),  # one image's PSNR swings by 20 dB
        Case("4 img, 2 steps of 2, quickstart CNN, photos",
             ("data.name=photos", "model.name=quickstart-cnn", "model.activation=relu", "client.local_steps=2",
              "client.batch_size=2"), 4),
        Case("Dimitrov: 50 img, 1 epoch of 10, ConvNet, photos",
             ("data.name=photos", "model.name=convnet", "model.activation=relu", width, small,
              "client.local_steps=0", "client.local_epochs=1", "client.batch_size=10"), 50, seeds=(0,)),
        Case("Dimitrov: 50 img, 5 epochs of 10, ConvNet, photos",
             ("data.name=photos", "model.name=convnet", "model.activation=relu", width, small,
              "client.local_steps=0", "client.local_epochs=5", "client.batch_size=10"), 50, seeds=(0,)),
        Case("1 img, 1 step, ConvNet (BatchNorm), photos",
             ("data.name=photos", "model.name=convnet", "model.activation=relu", width, "client.local_steps=1",
              "client.batch_size=1"), 1, seeds=tuple(range(8))),
        Case("4 img, 2 steps of 2, quickstart CNN, lfw-subset",
             ("data.name=lfw-subset", "model.name=quickstart-cnn", "model.activation=relu", "client.local_steps=2",
              "client.batch_size=2"), 4),
        Case("4 img, 2 steps of 2, ConvNet (BatchNorm), photos",
             ("data.name=photos", "model.name=convnet", "model.activation=relu", width, "client.local_steps=2",
              "client.batch_size=2"), 4),
    ]
    return out


def victim_indices(overrides: tuple[str, ...], n: int, seed: int):
    """The experiment of `overrides` at `seed`, and the `n` training images the victim holds, drawn by seed."""
    exp = build(fconfig.load(None, ["audit.attacks=[]", *overrides, f"seed={seed}"]))
    return exp, sorted(np.random.default_rng(seed).choice(len(exp.train), n, replace=False).tolist())


def victim(case: Case, seed: int):
    """The victim's update and truth: `case.images` training images drawn by seed."""
    exp, idx = victim_indices(case.overrides, case.images, seed)
    obs, truth = observed_update(*case.overrides, f"seed={seed}", indices=idx)
    return obs, truth, exp


def flat_psnr(images: np.ndarray) -> np.ndarray:
    """The flat-image baseline: each image's PSNR against its own mean grey (the best constant)."""
    return np.array([psnr(np.full_like(x, float(x.mean())), x) for x in images])


def scores(rec, truth, obs) -> dict:
    r = obs.data.to_pixels(rec.images.detach().float().cpu()).numpy()
    t = obs.data.to_pixels(truth.images.float()).numpy()
    s = match_and_score(r, t)
    flat = flat_psnr(t)
    flat_ssim = np.array([max(ssim(np.full_like(x, v), x) for v in np.linspace(0, 1, 21)) for x in t])
    return {"psnr": float(s.psnr.mean()), "flat": float(flat.mean()), "ssim": float(s.ssim.mean()),
            "recovered": int(((s.ssim >= 0.5) & (s.ssim > flat_ssim)).sum()), "ssim_half": int((s.ssim >= 0.5).sum()),
            "images": len(t),
            "worst_margin": float((s.psnr - flat).mean()),
            "label_acc": label_accuracy(rec.labels.cpu().numpy(), truth.labels.numpy())}


def measure(case: Case, attack: str, calibrated: bool, quick: bool, budget: int = 6, count: int = 2,
            iterations: int | None = None,
            iteration_factor: int = AuditConfig.calibration_iteration_factor,
            restart_factor: int = AuditConfig.calibration_restart_factor, overrides: dict | None = None) -> dict:
    """One row: `attack` (its defaults, then `overrides`, then `iterations`) on every seed of `case`."""
    spec = ATTACKS.get(attack)
    base_params = replace(spec.params(), **(overrides or {}))
    if iterations:
        base_params = replace(base_params, iterations=iterations)
    if quick:
        base_params = replace(base_params, iterations=min(base_params.iterations, 100))
    budget = 2 if quick else budget
    per, seconds, calib_s, tuned, check = [], [], 0.0, {}, {}
    calibrations: dict = {}
    for seed in case.seeds:
        obs, truth, exp = victim(case, seed)
        params = base_params
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        ctx = AttackContext(seed=seed, device=device)
        if calibrated:
            key = obs.protocol
            if key not in calibrations:  # once per (model, protocol, defense): later seeds reuse it
                x, y = exp.test.get(range(len(exp.test)))
                sim, held_out = judges(obs, x, y, cases=1 if quick else count, seed=seed,
                                       min_images=1 if quick else AuditConfig.calibration_images)
                t0 = time.perf_counter()
                calibrations[key] = calibrate(attack, base_params, sim, budget=budget, ctx=ctx,
                                              held_out=held_out, iteration_factor=2 if quick else iteration_factor,
                                              restart_factor=2 if quick else restart_factor)
                calib_s += time.perf_counter() - t0
            params, tuned, check = calibrations[key].params, calibrations[key].tuned, calibrations[key].held_out
        t0 = time.perf_counter()
        rec = spec(obs.to(device), params, ctx)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
        per.append(scores(rec, truth, obs))
    named = ", ".join(f"{k}={getattr(base_params, k)}" for k in (overrides or {}))  # as run (quick caps iterations)
    return {"case": case.name, "attack": attack + (f" ({named})" if named else "") + (" (calibrated)" if calibrated else ""),
            "psnr": float(np.mean([p["psnr"] for p in per])), "flat": float(np.mean([p["flat"] for p in per])),
            "margin": float(np.mean([p["psnr"] - p["flat"] for p in per])),
            "worst_margin": float(min(p["worst_margin"] for p in per)),
            "ssim": float(np.mean([p["ssim"] for p in per])),
            "recovered": f"{sum(p['recovered'] for p in per)}/{sum(p['images'] for p in per)}",
            "ssim>=0.5": f"{sum(p['ssim_half'] for p in per)}/{sum(p['images'] for p in per)}",
            "label_acc": float(np.mean([p["label_acc"] for p in per])), "s_per_job": float(np.mean(seconds)),
            "calibration_s": calib_s, "budget": budget if calibrated else "",
            "tuned": str(tuned) if calibrated else "",
            "held_out": str(check) if calibrated else "", "seeds": len(case.seeds),
            "iterations": base_params.iterations, "update_entries": sum(v.numel() for v in obs.update.values()),
            "unknown_pixels": case.images * int(np.prod(obs.data.shape))}


@dataclass(frozen=True)
class Plan:
    """Which cases a benchmark runs, and what it calibrates (a calibration costs `budget` x `count`
    attack runs, and 2 x `count` more to confirm a winner on fresh updates, once per case: its
    victims share the protocol; `count` grows where its updates hold fewer than
    `audit.calibration_images` images, as the audit's does)."""

    cases: tuple[int, ...]
    calibrated: tuple[str, ...] = ("invgrad",)  # attacks also run calibrated
    budget: int = AuditConfig.calibration_budget  # the audit's default
    # attacks calibrated on a smaller budget: invgrad at 12 settings would cost 1-2 CPU hours per case
    budgets: tuple[tuple[str, int], ...] = (("invgrad", 6),)
    count: int = 2
    seeds: tuple[int, ...] | None = None  # None: each case's own
    cpu_iterations: int | None = None  # on a CPU, every attack at this many iterations (None: defaults)
    iterations: int | None = None  # on any device, every attack at this many iterations (None: as above)
    attacks: tuple[str, ...] = ("invgrad", "fedavg")
    variants: tuple[tuple[tuple[str, object], ...], ...] = ((),)  # per attack: settings over its defaults

    def budget_for(self, attack: str) -> int:
        return dict(self.budgets).get(attack, self.budget)


PLANS = {
    "realistic": Plan(cases=(0, 1, 5, 6, 10), calibrated=("invgrad", "fedavg")),
    "realistic_epochs": Plan(cases=(3, 4), calibrated=("invgrad", "fedavg"), count=1, seeds=(0, 1)),
    "dimitrov": Plan(cases=(2, 7, 8), calibrated=(), seeds=(0,), cpu_iterations=250),
    "realistic_long": Plan(cases=(0, 5, 6), calibrated=(), attacks=("invgrad",), iterations=4000),
    "init_colour": Plan(cases=(5, 6), calibrated=(), attacks=("invgrad", "fedavg"),
                        variants=((("init", "randn"),), (("init", "mean"),), (("init", "leaked-mean"),))),
    "grey_starts": Plan(cases=(9,), calibrated=(), attacks=("invgrad",), variants=((("greys", 1),), ())),
    "restarts": Plan(cases=(0, 1, 5, 6), calibrated=(), attacks=("invgrad",),
                     variants=((("restarts", 2), ("iterations", 1000)), (), (("restarts", 4),))),
    "rebalance": Plan(cases=(0, 1, 6, 10, 11), calibrated=(), attacks=("invgrad",),
                      variants=((), (("rebalance", False),))),
    "calibration_budget": Plan(cases=(6, 10), calibrated=("invgrad",), attacks=("invgrad",), budgets=()),
    "convnet_epochs": Plan(cases=(2,), calibrated=("fedavg",), attacks=("fedavg",), seeds=(0,), cpu_iterations=250),
    "features": Plan(cases=(5, 9), calibrated=(), attacks=("invgrad",),
                     variants=((), (("features", 0.01),), (("features", 0.1),), (("features", 1.0),))),
    "distance": Plan(cases=(5, 9, 6, 10, 0), calibrated=(), attacks=("invgrad",), variants=((), (("loss", "l2"),))),
    "soft_pool": Plan(cases=(5, 6, 10, 9, 11), calibrated=(), attacks=("invgrad", "fedavg"),
                      variants=((("soft_pool", 0.0),), ())),
    "bn_stats": Plan(cases=(9, 11), calibrated=(), attacks=("invgrad", "fedavg"),
                     variants=((("bn_stats", 0.0),), (("bn_stats", 10.0),), ())),
    "bn_stats_epochs": Plan(cases=(2,), calibrated=(), attacks=("fedavg",), cpu_iterations=250,
                            variants=((("bn_stats", 0.0),), (("bn_stats", 10.0),), ())),
}


def run_plan(plan: Plan, quick: bool) -> list[dict]:
    torch.set_num_threads(1)
    every = cases(False)
    chosen = [every[i] for i in plan.cases][: 1 if quick else None]
    if os.environ.get("FEDATTACK_PLAN_CASES"):
        chosen = [chosen[int(i)] for i in os.environ["FEDATTACK_PLAN_CASES"].split(",")]
    attacks = tuple(os.environ["FEDATTACK_PLAN_ATTACKS"].split(",")) if os.environ.get("FEDATTACK_PLAN_ATTACKS") \
        else plan.attacks
    rows = []
    for case in chosen:
        if plan.seeds is not None and len(case.seeds) > 1:
            case = replace(case, seeds=plan.seeds)
        iterations = plan.iterations or (None if full_scale() else plan.cpu_iterations)
        for attack in attacks:
            for variant in plan.variants:
                for calibrated in (False, True) if attack in plan.calibrated else (False,):
                    rows.append(measure(case, attack, calibrated, quick, budget=plan.budget_for(attack),
                                        count=plan.count, iterations=iterations, overrides=dict(variant)))
                    print(rows[-1], flush=True)  # a long benchmark shows each row as it is measured
    return rows


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["realistic"], quick)
