"""landscape: why `invgrad` misses some single images on Flower's quickstart CNN.

One photo in one local step on the quickstart CNN (ReLU, max-pooling; the `realistic` case "1
img, 1 step, quickstart CNN, photos" and its eight victims) is the plain gradient-matching
setting, and yet `invgrad` recovers only about half of the images. This benchmark asks whether a
longer or wider search would find the rest. Per victim, `starts` independent starts run
`invgrad`'s default schedule (its defaults: 2000 signed-Adam iterations, cosine distance, the
balanced TV prior, the start around the leaked colour). Columns:
- the PSNR range over the starts, and the PSNR and final mismatch of the start with the lowest
  mismatch (what `restarts` would keep);
- `mismatch on the way`: the highest mismatch on the straight line from that output to the true
  image (at a quarter, half and three quarters of the way; the truth's own is 0);
- `truth's prior` against `output's objective`: the TV term the true image pays at the run's
  weight, and the output's whole objective (mismatch + TV). Where the truth pays more, it is not
  the optimum of the objective the run minimizes;
- `kept PSNR at tv/10`: the same starts with a tenth of the TV weight, the start with the lowest
  mismatch kept: does a weaker prior let the run reach the truth?

How to read it: where every start ends within a dB or two of the others, more restarts change
nothing; a mismatch that rises on the way to the truth is a barrier, so the output is a local
minimum; and where the truth's prior alone outweighs the output's objective, the smoothness prior
draws the run away from the true image; the last column says whether a weaker prior does better
from the same starts. No attack's default is derived from this section.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.bench_realistic import cases, flat_psnr, victim
from fedattack.attacks import AttackContext
from fedattack.attacks.engine import matching
from fedattack.attacks.invgrad import InvGradParams
from fedattack.attacks.labels import label_hypotheses
from fedattack.attacks.optimize import AdamSchedule, init_unknowns, run_adam, start_centre
from fedattack.metrics.images import psnr

CASE = 5  # "1 img, 1 step, quickstart CNN, photos" in bench_realistic.cases
WAY = (0.25, 0.5, 0.75)  # points on the line from the output to the truth


def inverted(obs, seed: int, starts: int, iterations: int, tv: float):
    """`starts` starts of invgrad's default schedule at TV weight `tv`: the matching problem,
    the unknowns where they ended and their final mismatches."""
    p = InvGradParams()
    cpu = torch.device("cpu")
    ctx = AttackContext(seed=seed, device=cpu)
    hypotheses, _ = label_hypotheses(obs, 1, ctx.labels, k=1)
    problem = matching(obs, cpu, p.loss, {"tv": tv, "l2": p.l2})
    centre = start_centre(p.init, problem.target, obs.data)
    u = init_unknowns(obs.data, 1, starts, hypotheses[0], ctx.generator(), cpu, p.init, centre=centre)
    sched = AdamSchedule(iterations, p.lr, p.signed, p.boxed, p.lr_decay, p.tv_decay, p.balanced, p.rebalance)
    return problem, u, run_adam(problem, u, sched, obs.data.bounds(cpu)).numpy()


def victim_row(seed: int, starts: int, iterations: int) -> dict:
    obs, truth, _ = victim(cases(False)[CASE], seed)
    truth_px = obs.data.to_pixels(truth.images.float()).numpy()[0]

    def scores(u) -> list[float]:
        return [psnr(obs.data.to_pixels(u.x[k].detach()).numpy()[0], truth_px) for k in range(starts)]

    problem, u, final = inverted(obs, seed, starts, iterations, InvGradParams().tv)
    _, weak, weak_final = inverted(obs, seed, starts, iterations, InvGradParams().tv / 10)
    best = int(np.argmin(final))
    out, x_true, y = u.x[best].detach(), truth.images.float(), u.labels[best]
    weight = problem.balance or 1.0  # the prior's weight as the run used it (balanced at its start)
    with torch.no_grad():
        on_way = max(float(problem.mismatch((1 - a) * out + a * x_true, y)) for a in WAY)
        truth_prior = weight * float(problem.prior(x_true))
        objective = float(final[best]) + weight * float(problem.prior(out))
    psnrs = scores(u)
    return {"victim": seed, "flat": float(flat_psnr(truth_px[None])[0]),
            "starts PSNR": f"{min(psnrs):.1f} to {max(psnrs):.1f}", "kept PSNR": psnrs[best],
            "kept mismatch": f"{final[best]:.3g}", "mismatch on the way": f"{on_way:.3g}",
            "truth's prior": f"{truth_prior:.3g}", "output's objective": f"{objective:.3g}",
            "truth optimal": truth_prior < objective,
            "kept PSNR at tv/10": scores(weak)[int(np.argmin(weak_final))],
            "starts": starts, "iterations": iterations}


def run(quick: bool = False) -> list[dict]:
    torch.set_num_threads(1)
    seeds, starts, iterations = ((0,), 2, 100) if quick else (tuple(range(8)), 4, InvGradParams().iterations)
    rows = []
    for seed in seeds:
        rows.append(victim_row(seed, starts, iterations))
        print(rows[-1], flush=True)
    return rows
