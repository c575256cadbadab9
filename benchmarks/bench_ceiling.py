"""ceiling: what gradient matching can reach when it starts next to the truth.

An attack that ends far from the private images either lost its way (a local minimum, a
bad step size, the wrong labels) or met an update that does not pin the images down: other
images produce the same update. Starting the attack's own optimizer at the truth tells the
two apart. Here, for the realistic cases of `realistic` and `realistic_epochs` (same victims
and seeds), invgrad's objective and optimizer (cosine distance, relative TV share 0.1,
signed Adam with its step-size decay, pixels boxed) start from the private images, in the
order the client trained on them (its first epoch's order) and with their true labels, plus
Gaussian noise of 0.05 in pixel units, and run the attack's default 1000 iterations: once as
the attack runs (TV prior, step size 0.1, columns `_tv`), once as gradient matching alone
with a small step size (0.01, columns `_lr0.01` and `_alone`), which moves at most a few
hundredths per pixel and so follows the mismatch down from where it starts.

Columns: the mismatch at the truth itself (0 where the attacker's replay of the protocol is
exact; local epochs reshuffle the data, so the truth in one order does not reproduce them),
the PSNR and mismatch of the noisy start, where each run ends, and the flat-image baseline.
Where a run drifts from about 26 dB at the start to well below it while its mismatch falls,
the update allows images farther from the truth that it cannot tell apart: the figure of a
from-scratch attack on that case is bounded by the update, not by the search. Max-pooling
is one such limit: only the pooled maxima's inputs reach the gradient.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from benchmarks.bench_realistic import cases, flat_psnr, victim
from fedattack.attacks.engine import matching
from fedattack.attacks.optimize import AdamSchedule, Unknowns, run_adam
from fedattack.metrics.images import match_and_score
from fedattack.testing.cases import training_order

NOISE = 0.05  # pixel units
ITERATIONS = 1000
CASES = {  # index into bench_realistic.cases -> seeds (those of the realistic benchmarks)
    "realistic": {5: (0, 1, 2, 3), 6: (0, 1, 2), 0: (0, 1, 2), 1: (0, 1, 2)},
    "realistic_epochs": {3: (0, 1), 4: (0, 1)},
}


def start_from_truth(truth_x: torch.Tensor, obs, gen: torch.Generator) -> torch.Tensor:
    pixels = obs.data.to_pixels(truth_x)
    noisy = (pixels + NOISE * torch.randn(pixels.shape, generator=gen)).clamp(0, 1)
    return obs.data.normalize(noisy)


def refine(obs, labels: torch.Tensor, start: torch.Tensor, tv: float, lr: float, iterations: int
           ) -> tuple[torch.Tensor, float]:
    problem = matching(obs, None, "cosine", {"tv": tv})
    u = Unknowns(x=start[None].clone().requires_grad_(True), labels=labels[None])
    sched = AdamSchedule(iterations, lr=lr, signed=True, boxed=True, decay=True, balanced=True)
    final = run_adam(problem, u, sched, obs.data.bounds())
    return u.x[0].detach(), float(final[0])


def score(x: torch.Tensor, truth_px: np.ndarray, obs) -> float:
    return float(match_and_score(obs.data.to_pixels(x).numpy(), truth_px).psnr.mean())


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    every = cases(False)
    chosen = {6: (0,)} if quick else {**CASES["realistic"], **CASES["realistic_epochs"]}
    iterations = 50 if quick else ITERATIONS
    rows = []
    for index, seeds in chosen.items():
        case = replace(every[index], seeds=seeds)
        per = []
        for seed in seeds:
            obs, truth, _ = victim(case, seed)
            order = training_order(truth, *case.overrides, f"seed={seed}")
            truth_x, labels = truth.images.float()[order], truth.labels[order]
            truth_px = obs.data.to_pixels(truth_x).numpy()
            plain = matching(obs, None, "cosine")
            start = start_from_truth(truth_x, obs, torch.Generator().manual_seed(seed))
            with torch.no_grad():
                at_truth = float(plain.mismatch(truth_x, labels))
                at_start = float(plain.mismatch(start, labels))
            t0 = time.perf_counter()
            with_tv, m_tv = refine(obs, labels, start, 0.1, 0.1, iterations)
            alone, m_alone = refine(obs, labels, start, 0.0, 0.01, iterations)
            per.append({"at_truth": at_truth, "at_start": at_start, "start": score(start, truth_px, obs),
                        "tv": score(with_tv, truth_px, obs),
                        "alone": score(alone, truth_px, obs), "m_tv": m_tv, "m_alone": m_alone,
                        "flat": float(flat_psnr(truth_px).mean()),
                        "seconds": (time.perf_counter() - t0) / 2})
        mean = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
        rows.append({"case": case.name, "seeds": len(seeds), "mismatch_at_truth": mean["at_truth"],
                     "start_psnr": mean["start"], "start_mismatch": mean["at_start"],
                     "end_psnr_tv": mean["tv"], "end_mismatch_tv": mean["m_tv"],
                     "end_psnr_matching_lr0.01": mean["alone"], "end_mismatch_alone": mean["m_alone"],
                     "flat": mean["flat"], "iterations": iterations, "s_per_run": mean["seconds"]})
        print(rows[-1], flush=True)
    return rows
