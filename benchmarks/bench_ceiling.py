"""ceiling: what gradient matching can reach when it starts next to the truth.

An attack that ends far from the private images either lost its way (a local minimum, a
bad step size, the wrong labels) or met an update that does not pin the images down: other
images produce the same update. Starting the attack's own optimizer at the truth tells the
two apart. Here, for the realistic cases of `realistic` and `realistic_epochs` (same victims
and seeds), invgrad's objective and optimizer (cosine distance, relative TV share 0.1,
signed Adam with its step-size decay, pixels boxed) start from the private images, grouped
as the client trained on them (its first epoch's order and, where it reshuffled every epoch,
each epoch's order: `Unknowns.orders`) and with their true labels, plus Gaussian noise of
0.05 in pixel units, and run the attack's default 1000 iterations: once as the attack runs
(TV prior, step size 0.1, columns `_tv`), once as gradient matching alone with a small step
size (0.01, columns `_lr0.01` and `_alone`), which moves at most a few hundredths per pixel
and so follows the mismatch down from where it starts. A third run starts where the attack
does (random images), but knows the labels and the grouping (`scratch_`): the gap between it
and the attack is the price of not knowing them.

Columns: the mismatch at the truth itself (0 where the attacker's replay of the protocol is
exact), and in one fixed order (the first epoch's for every epoch: where the client
reshuffled, the same images in one order need not reproduce the update), the PSNR and
mismatch of the noisy start, where each run ends, and the flat-image baseline.
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
from fedattack.attacks.optimize import AdamSchedule, Unknowns, batched_objective, epoch_batches, init_images, run_adam
from fedattack.metrics.images import match_and_score
from fedattack.testing.cases import epoch_orders, training_order

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


def refine(obs, labels: torch.Tensor, start: torch.Tensor, tv: float, lr: float, iterations: int,
           orders: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    problem = matching(obs, None, "cosine", {"tv": tv})
    u = Unknowns(x=start[None].clone().requires_grad_(True), labels=labels[None],
                 orders=None if orders is None else orders[None])
    sched = AdamSchedule(iterations, lr=lr, signed=True, boxed=True, decay=True, balanced=True)
    final = run_adam(problem, u, sched, obs.data.bounds())
    return u.x[0].detach(), float(final[0])


def mismatch(obs, x: torch.Tensor, labels: torch.Tensor, orders: torch.Tensor | None) -> float:
    u = Unknowns(x=x[None], labels=labels[None], orders=None if orders is None else orders[None])
    with torch.no_grad():
        return float(batched_objective(matching(obs, None, "cosine"), u, "mismatch")[0])


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
            reshuffled = epoch_batches(len(order), obs.protocol) is not None
            orders = epoch_orders(truth, *case.overrides, f"seed={seed}") if reshuffled else None
            gen = torch.Generator().manual_seed(seed)
            start = start_from_truth(truth_x, obs, gen)
            t0 = time.perf_counter()
            with_tv, m_tv = refine(obs, labels, start, 0.1, 0.1, iterations, orders)
            alone, m_alone = refine(obs, labels, start, 0.0, 0.01, iterations, orders)
            scratch, m_scratch = refine(obs, labels, init_images("randn", truth_x.shape, obs.data, gen), 0.1, 0.1,
                                        iterations, orders)
            per.append({"at_truth": mismatch(obs, truth_x, labels, orders),
                        "fixed_order": mismatch(obs, truth_x, labels, None),
                        "at_start": mismatch(obs, start, labels, orders), "start": score(start, truth_px, obs),
                        "tv": score(with_tv, truth_px, obs),
                        "alone": score(alone, truth_px, obs), "m_tv": m_tv, "m_alone": m_alone,
                        "scratch": score(scratch, truth_px, obs), "m_scratch": m_scratch,
                        "flat": float(flat_psnr(truth_px).mean()),
                        "seconds": (time.perf_counter() - t0) / 3})
        mean = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
        rows.append({"case": case.name, "seeds": len(seeds), "mismatch_at_truth": mean["at_truth"],
                     "mismatch_fixed_order": mean["fixed_order"],
                     "start_psnr": mean["start"], "start_mismatch": mean["at_start"],
                     "end_psnr_tv": mean["tv"], "end_mismatch_tv": mean["m_tv"],
                     "end_psnr_matching_lr0.01": mean["alone"], "end_mismatch_alone": mean["m_alone"],
                     "scratch_psnr_known_grouping": mean["scratch"], "scratch_mismatch": mean["m_scratch"],
                     "flat": mean["flat"], "iterations": iterations, "s_per_run": mean["seconds"]})
        print(rows[-1], flush=True)
    return rows
