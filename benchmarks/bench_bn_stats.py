"""bn_stats: what the BatchNorm running statistics a client sends back give away, on Geiping et al.'s ConvNet.

A Flower client that sends its whole state_dict returns each BatchNorm layer's running mean and
variance as its local training left them; with the ones the server sent, they give a weighted
average of every step's batch statistics (`engine.RunningStatistics`). `invgrad` and `fedavg`
match them beside the update at weight `bn_stats` (default 1), and `invgrad` starts from the
colour the first layer's running mean gives (`engine.batch_norm_colour`); `bn_stats=0` is the
update alone, and `bn_stats=10` weighs the statistics tenfold. One photo in one step (eight
victims) and four photos in two steps of two (three); columns as in `realistic`
(benchmarks/bench_realistic.py).
"""

from __future__ import annotations

from benchmarks.bench_realistic import PLANS, run_plan


def run(quick: bool = False) -> list[dict]:
    return run_plan(PLANS["bn_stats"], quick)
