"""The FedAvg attack of Dimitrov et al. ("Data Leakage in Federated Averaging", TMLR 2022).

A client that trains several local epochs reshuffles its data every epoch: the server knows
the number of epochs, the batch size and the learning rate, but not which samples shared a
batch in which epoch. Replaying the epochs with one set of dummy images in a fixed batch
order (what Inverting Gradients' multi-step attack does) forces the same grouping on every
epoch. Dimitrov et al. instead reconstruct one copy of the images per epoch, each free to
arrange itself into that epoch's batches, replay the local training on those copies, and
hold the copies together with an epoch-order-invariant prior: every epoch trains on the same
set of samples, so a permutation-invariant summary of each copy (its mean image) must agree
across epochs. At the end the copies are matched to each other by optimal assignment and
averaged.

Objective (per restart):

    D(trial(x_1..x_E, y), g_obs) + tv * TV(x) + invariance * sum_(e,e') ||mean(x_e) - mean(x_e')||^2

D is the layer-wise cosine distance (every parameter tensor counts the same; Dimitrov et al.
match per-layer normalized updates), optimized with Adam and an exponentially decaying step
size; pixels are projected onto the valid box after each step. Labels are the counts of the
`dimitrov` label method (the softmax interpolated between the start and end of local
training), arranged over the dummy samples. In step mode (one pass or less over the data)
the attack is Inverting Gradients' replay with one copy.

Where the arrangement of the labels matters (several local steps: which labels share a step;
several epochs: which share a batch in each reshuffled epoch, so each copy gets its own), one
arbitrary arrangement can leave the replay unable to match the update at all. `candidates`
arrangements are then screened by a short run each (a 40th of the iterations, from fresh
starts), as `invgrad` screens its label candidates, and the best continues; in step mode a
local search of `label_search` rounds (swaps between steps, relabels) follows the screen. On the
`realistic` cases (benchmarks/bench_realistic.py, defaults otherwise, mean PSNR minus the
flat-image baseline): 8 images in 4 steps on a sigmoid LeNet, -3.6 dB with one arrangement,
-2.0 with 16 screened; 4 images in 2 steps on the quickstart CNN, -3.2 and -2.3; 16 images in 2
epochs of 4 on the quickstart CNN, -4.4 and -3.5.

The default of 4000 iterations: 1000 left the copies unconverged. On the seven `realistic` and
`realistic_epochs` cases (LeNet sigmoid and the quickstart CNN; 1 to 16 images; steps and epochs)
the mean PSNR rose from 16.6 dB at 1000 iterations to 17.9 at 4000: +0.6 to +3.0 dB on six
cases, -0.3 on LeNet's 8 faces in 4 steps; 2000 iterations gave about half of the gain on the six.
It costs four times the time (on 2 CPU cores, beside another process, 1.8 to 2.5 minutes per job
for 16 images in 2 epochs of 4). On a CPU, lower `iterations` for large clients.
Inverting Gradients' signed Adam instead of plain Adam scored as well on the quickstart CNN's
epochs (4000 iterations each), 0.9 dB lower on LeNet's, and 2.1 dB lower on LeNet's 8 images in 4
steps (2000 each).

`bn_stats` matches the BatchNorm running statistics the client returned beside the update, as
`invgrad` does (`engine.RunningStatistics`); on the ConvNet, one photo in one step, 9.7 dB without
them and 18.5 with (the `bn_stats` benchmark).

`soft_pool` anneals the model's max-pools from soft to hard over the first half of the run, as
`invgrad` does (`pooling.py`). On the quickstart CNN's `realistic` victims (benchmark
`soft_pool`) it lifts the mean PSNR by 0.3 to 2.3 dB over hard pools throughout; models without
max-pools are unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedattack.attacks.base import AttackContext, Choice, LogRange, register_attack
from fedattack.attacks.engine import DISTANCES, epoch_of_step, matching, num_images
from fedattack.attacks.labels import label_hypotheses
from fedattack.attacks.optimize import (INITS, AdamSchedule, best_restart, centre_info, consensus, init_unknowns,
                                        label_plan, per_epoch_labels, run_adam, screen_labels, subset)
from fedattack.attacks.optimize import batched_objective, observed_stats, shrink, soft_temperature, start_centre
from fedattack.threat import Observation, Reconstruction
from fedattack.validate import check_choice, check_range


@dataclass
class FedAvgParams:
    iterations: int = 4000  # why not fewer: the docstring
    lr: float = 0.1  # Adam step size in model-input units
    lr_decay: float = 0.01  # the step size falls geometrically to lr * lr_decay over the run
    tv: float = 0.1  # weight of total variation (absolute; the distance is a mean of per-layer cosines)
    invariance: float = 1.0  # weight of the epoch-order-invariant prior
    restarts: int = 1
    candidates: int = 16  # label arrangements screened where they matter (docstring); 1: one arbitrary
    label_search: int = 2  # step mode: rounds of local search over the screened arrangements
    loss: str = "layer-cosine"
    init: str = "mean"  # mean | leaked-mean (randn around the colour the first layer leaks) | randn | uniform
    shrink: float = 0.0  # pull each output image toward its mean grey (0: none, 1: flat); calibration sets it
    soft_pool: float = 0.3  # max-pools softened at this temperature where the run starts, hard by its middle
    bn_stats: float = 1.0  # weight of the returned BatchNorm running statistics, matched beside the update (0: off)

    def validate(self, name: str) -> None:
        check_range(name, "iterations", self.iterations, 1)
        check_range(name, "lr", self.lr, 0, lo_open=True)
        check_range(name, "lr_decay", self.lr_decay, 0, 1, lo_open=True)
        check_range(name, "tv", self.tv, 0)
        check_range(name, "invariance", self.invariance, 0)
        check_range(name, "restarts", self.restarts, 1)
        check_range(name, "candidates", self.candidates, 1)
        check_range(name, "label_search", self.label_search, 0)
        check_choice(name, "loss", self.loss, sorted(DISTANCES))
        check_choice(name, "init", self.init, list(INITS))
        check_range(name, "shrink", self.shrink, 0, 1)
        check_range(name, "soft_pool", self.soft_pool, 0)
        check_range(name, "bn_stats", self.bn_stats, 0)


def epochs_of(obs: Observation, n: int) -> int:
    """How many epochs the observed update spans (1 in step mode)."""
    return max(epoch_of_step(n, obs.protocol)) + 1


# the step size that suits a model varies tenfold (the cases of benchmarks/bench_realistic.py run at
# fixed step sizes 0.1, 0.3 and 1.0): the quickstart CNN (ReLU, max-pooling) leaked most at 1.0,
# LeNet sigmoid on faces at the default 0.1
@register_attack("fedavg", params=FedAvgParams, adaptive=True,
                 tunable={"tv": LogRange(1e-4, 1.0), "lr": LogRange(0.01, 1.0), "invariance": LogRange(1e-2, 1e2),
                          "init": Choice(("mean", "leaked-mean"))},
                 paper="Dimitrov et al., Data Leakage in Federated Averaging, TMLR 2022")
def fedavg(obs: Observation, params: FedAvgParams, ctx: AttackContext) -> Reconstruction:
    n = num_images(obs)
    gen = ctx.generator()
    copies = epochs_of(obs, n)
    method = "dimitrov" if ctx.labels == "auto" else ctx.labels
    k = max(params.restarts, params.candidates)
    hypotheses, method = label_hypotheses(obs, n, method, k=k)
    plan = label_plan(hypotheses, obs.protocol, k, gen)
    if copies > 1:  # the likeliest multiset, each epoch's copy arranged in its own order
        plan = per_epoch_labels(plan[0], copies, k, gen)
    priors = {"tv": params.tv, "epoch-invariance": params.invariance if copies > 1 else 0.0}
    problem = matching(obs, ctx.device, params.loss, priors, adaptive=ctx.adaptive, bn_stats=params.bn_stats)
    centre = start_centre(params.init, problem.target, obs.data, observed_stats(problem))
    bounds = obs.data.bounds(ctx.device)
    screen = AdamSchedule(max(1, params.iterations // 40), params.lr, signed=False, decay=False)
    screened = len(plan) > params.restarts
    if screened and copies == 1:
        u = screen_labels(problem, plan, params.restarts, screen, data=obs.data, protocol=obs.protocol, gen=gen,
                          device=ctx.device, init=params.init, size=None, bounds=bounds,
                          rounds=params.label_search, centre=centre)
    else:
        u = init_unknowns(obs.data, n, len(plan) if screened else params.restarts, plan, gen, ctx.device,
                          params.init, copies=copies if copies > 1 else 0, centre=centre)
        if screened:
            u = subset(u, torch.argsort(run_adam(problem, u, screen, bounds).cpu())[: params.restarts])
    lo, hi = bounds
    opt = torch.optim.Adam([u.x], lr=params.lr)
    gamma = params.lr_decay ** (1.0 / max(1, params.iterations))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
    for it in range(params.iterations):
        problem.trial.model.soften(soft_temperature(params.soft_pool, it, params.iterations))
        opt.zero_grad(set_to_none=True)
        batched_objective(problem, u).sum().backward(inputs=[u.x])
        opt.step()
        sched.step()
        with torch.no_grad():
            u.x.clamp_(min=lo, max=hi)
    problem.trial.model.soften(0.0)
    with torch.no_grad():
        final = batched_objective(problem, u, "mismatch").detach().cpu()
    r = best_restart(final)
    x = u.x.detach()[r]
    images = shrink(consensus(x) if copies > 1 else x, params.shrink, obs.data)
    return Reconstruction(images=images, labels=u.final_labels(r),
                          info={"loss": float(final[r]), "iterations": params.iterations, "epochs": copies,
                                "restarts": params.restarts, "label_method": method,
                                "label_candidates": len(plan) if screened else 1,
                                "init_colour": centre_info(centre)})
