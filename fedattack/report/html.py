"""report.html: leakage and accuracy over rounds (matplotlib), per-attack table, galleries."""

from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedattack.report import tables
from fedattack.report.summary import Summary
from fedattack.results import JobResult, RoundResult


def plot_rounds(run_dir: Path, results: list[JobResult], rounds: list[RoundResult]) -> list[str]:
    """Write plots/*.png; return their relative paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    (run_dir / "plots").mkdir(exist_ok=True)
    out = []
    series: dict[str, dict[int, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r.ok:
            series[r.label][r.round].append((r.score.psnr, r.score.ssim))
    if series:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for name, per_round in sorted(series.items()):
            rs = sorted(per_round)
            for ax, k in zip(axes, (0, 1)):
                ax.plot(rs, [np.nanmean([v[k] for v in per_round[x]]) for x in rs], marker="o", label=name)
        axes[0].set(xlabel="round", ylabel="PSNR (dB)", title="Reconstruction PSNR")
        axes[1].set(xlabel="round", ylabel="SSIM", title="Reconstruction SSIM", ylim=(-0.1, 1))
        axes[1].legend(fontsize=8)
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.tight_layout()
        fig.savefig(run_dir / "plots" / "leakage.png", dpi=100)
        plt.close(fig)
        out.append("plots/leakage.png")
    if rounds:
        fig, ax = plt.subplots(figsize=(5, 3.6))
        ax.plot([r.round for r in rounds], [r.test_acc for r in rounds], marker="o", label="test accuracy")
        ax.plot([r.round for r in rounds], [r.train_loss for r in rounds], marker="s", label="train loss")
        ax.set(xlabel="round", title="Training")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(run_dir / "plots" / "training.png", dpi=100)
        plt.close(fig)
        out.append("plots/training.png")
    return out


def _table(rows: list[dict], cols: list[str], links: dict[str, str] | None = None) -> str:
    """An HTML table; `links`: column -> column holding a relative path the cell links to."""
    links = links or {}

    def cell(r: dict, c: str) -> str:
        text = html.escape(str(r.get(c, "")))
        target = r.get(links[c]) if c in links else None
        return f"<a href='{html.escape(target)}'>{text}</a>" if target else text

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r, c)}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(run_dir: str | Path, *, results: list[JobResult], rounds: list[RoundResult], summary: Summary) -> Path:
    run_dir = Path(run_dir)
    plots = plot_rounds(run_dir, results, rounds)
    attack_rows = [{"attack": k, **asdict(v)} for k, v in summary.attacks.items()]
    leak_rows = [tables.leakage_row(r, traceback_file=f"errors/{r.row_id}.txt" if r.traceback else "")
                 for r in results]
    images = sorted((run_dir / "images").glob("*.png")) if (run_dir / "images").is_dir() else []
    mode = summary.header.server_mode
    unscored = sorted({r.unscored for r in results if r.unscored})
    parts = [
        "<!doctype html><meta charset='utf-8'><title>fedattack report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
        "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
        "figure{display:inline-block;margin:6px}img{image-rendering:pixelated}</style>",
        "<h1>fedattack leakage report</h1>",
        f"<p>Server mode: <b>{html.escape(str(mode))}</b>"
        + (" &mdash; the server modified the model it sent (malicious threat model)." if mode == "malicious" else
           " &mdash; honest-but-curious: the protocol as configured, updates observed.") + "</p>",
        f"<p>Defense in force: <b>{html.escape(str(summary.defense))}</b>. Rounds: {summary.rounds}. "
        f"Final test accuracy: {summary.final_test_acc}. Client errors: {summary.client_errors}.</p>",
        "".join(f"<p><b>Scores unavailable</b> for {sum(r.unscored == u for r in results)} jobs: "
                f"{html.escape(u)}.</p>" for u in unscored),
        "<h2>Per attack</h2>",
        _table(attack_rows, ["attack", "jobs", "failed", "psnr", "ssim", "label_acc", "success_rate", "seconds",
                             "scope"]),
        "".join(f"<p><img src='{p}'></p>" for p in plots),
        "<h2>All audited updates</h2>",
        _table(leak_rows, ["round", "client", "attack", "adaptive", "scope", "status", "psnr", "ssim", "label_acc",
                           "success", "recovered", "num_images", "seconds", "error", "unscored"],
               links={"error": "traceback"}),
        "<h2>Galleries</h2><p>Top row: the client's private images; bottom row: the matched reconstruction.</p>",
        "".join(f"<figure><img src='images/{p.name}'><figcaption>{html.escape(p.stem)}</figcaption></figure>"
                for p in images),
    ]
    path = run_dir / "report.html"
    path.write_text("\n".join(parts))
    return path
