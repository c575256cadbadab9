"""The report's plots (matplotlib, Agg): leakage over rounds beside the flat-image baseline,
training loss and test accuracy on their own axes, and exposure over rounds."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fedattack.report.exposure import ALL, worst_clients
from fedattack.results import ExposureRow, JobResult, RoundResult

MAX_CLIENT_LINES = 8  # exposure plot: the most exposed clients get a line each


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _integer_rounds(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    lo, hi = ax.dataLim.intervalx
    if math.isfinite(lo) and math.isfinite(hi) and hi - lo < 3:  # few rounds: half a round of room each side
        ax.set_xlim(lo - 0.5, hi + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def percent_top(top: float) -> float:
    """The top of a recovered-share axis in per cent, from its largest value: 0..100 where
    nothing was recovered (a flat line at 0 % reads as none, where 0..1 read as a fraction),
    else a little above the largest value and at least 1 %."""
    return 100.0 if not top > 0 else max(1.0, top * 1.1)


def save(fig: Any, axes: Any, path: Path, *, rounds: bool = False) -> None:
    """Grid, legends where something is labelled (integer ticks for rounds), then the PNG."""
    for ax in axes:
        if rounds:
            _integer_rounds(ax)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # beside the axes: inside, it can hide a marker
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else math.nan


def leakage(path: Path, results: list[JobResult], *, success_ssim: float) -> bool:
    """PSNR and SSIM per round and attack (means over audited updates), each beside the flat
    image's baseline on the same images; False where nothing was scored."""
    series: dict[str, dict[int, list[JobResult]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r.ok and not math.isnan(r.score.psnr):
            series[r.label][r.round].append(r)
    if not series:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, per_round in sorted(series.items()):
        rs = sorted(per_round)
        # an adaptive variant dashed with crosses: where it ties the plain attack, both stay visible
        style = dict(marker="x", ls="--", markersize=9) if name.endswith("(adaptive)") else dict(marker="o")
        axes[0].plot(rs, [_nanmean([r.score.psnr for r in per_round[x]]) for x in rs], label=name, **style)
        axes[1].plot(rs, [_nanmean([r.score.ssim for r in per_round[x]]) for x in rs], label=name, **style)
    every: dict[int, list[JobResult]] = defaultdict(list)
    for per_round in series.values():
        for rnd, rs in per_round.items():
            every[rnd].extend(rs)
    rs = sorted(every)
    axes[0].plot(rs, [_nanmean([r.score.baseline_psnr for r in every[x]]) for x in rs], color="grey", ls="--",
                 marker="_", markersize=14, label="blank guess (best flat image)")
    axes[1].plot(rs, [_nanmean([r.score.baseline_ssim for r in every[x]]) for x in rs], color="grey", ls="--",
                 marker="_", markersize=14, label="blank guess (best flat image)")
    axes[1].axhline(success_ssim, color="red", lw=0.8, ls=":", label=f"recovered at SSIM >= {success_ssim:g}")
    axes[0].set(xlabel="round", ylabel="PSNR (dB), higher leaks more", title="Reconstruction PSNR per round")
    axes[1].set(xlabel="round", ylabel="SSIM, higher leaks more", title="Reconstruction SSIM per round",
                ylim=(-0.1, 1.05))
    save(fig, axes, path, rounds=True)
    return True


def training(path: Path, rounds: list[RoundResult]) -> bool:
    """Loss (train and test) and test accuracy per round, on separate axes."""
    rows = [r for r in rounds if r.round > 0]
    if not rows:
        return False
    plt = _plt()
    acc = [(r.round, r.test_acc) for r in rows if not math.isnan(r.test_acc)]
    if acc:
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.4))
    else:  # nothing evaluated (`fedattack attack`): no empty panel
        fig, loss_ax = plt.subplots(1, 1, figsize=(5.5, 3.4))
    x = [r.round for r in rows]
    loss_ax.plot(x, [r.train_loss for r in rows], marker="s", label="train loss (clients' mean)")
    if any(not math.isnan(r.test_loss) for r in rows):
        loss_ax.plot(x, [r.test_loss for r in rows], marker="o", label="test loss")
    loss_ax.set(xlabel="round", ylabel="cross-entropy loss", title="Loss")
    if not acc:
        save(fig, (loss_ax,), path, rounds=True)
        return True
    acc_ax.plot([a for a, _ in acc], [b for _, b in acc], marker="o", color="C2", label="test accuracy")
    acc_ax.set(xlabel="round", ylabel="accuracy", title="Test accuracy (held-out split)", ylim=(0, 1.02))
    save(fig, (loss_ax, acc_ax), path, rounds=True)
    return True


def exposure(path: Path, rows: list[ExposureRow]) -> bool:
    """Recovered share of training data per round: the run's and the most exposed clients'."""
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    by_client: dict = defaultdict(list)
    for r in rows:
        by_client[r.client].append(r)
    shown = [r.client for r in worst_clients(rows) if r.recovered][:MAX_CLIENT_LINES]
    for c in shown:
        pts = sorted(by_client[c], key=lambda r: r.round)
        ax.plot([r.round for r in pts], [100 * r.share for r in pts], marker=".", lw=1, label=f"client {c}")
    pts = sorted(by_client.get(ALL, []), key=lambda r: r.round)
    ax.plot([r.round for r in pts], [100 * r.share for r in pts], color="black", lw=2.5, marker="o",
            label="all clients")
    ax.set(xlabel="round", ylabel="training data recovered (%)", title="Exposure: recovered share, cumulative")
    top = max((100 * r.share for r in rows), default=0.0)
    ax.set_ylim(0, percent_top(top))
    _integer_rounds(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
