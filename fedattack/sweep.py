"""`fedattack sweep`: the privacy-utility frontier of one defense parameter.

    fedattack sweep CONFIG sweep.defense=gaussian sweep.values=[0.001,0.01,0.1,1.0]

runs the audited simulation once per value (each in its own process, `sweep.parallel` at a
time), then writes `sweep.csv` (one row per value x attack: test accuracy, PSNR, SSIM, label
accuracy, success rate, epsilon where defined) and `frontier.png` (test accuracy against
leakage), marking per attack its breaking point: the first value, in the order given (list
values from the weakest setting to the strongest), at which that attack no longer succeeds.
"""

from __future__ import annotations

import argparse
import csv
import math
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

from rich.table import Table

from fedattack.arguments import add_config_args, load_config
from fedattack.config import from_dict
from fedattack.defenses import DEFENSES
from fedattack.errors import ConfigError, FedattackError
from fedattack.report.console import Progress
from fedattack.report.store import check_out, default_out_dir, load_run
from fedattack.schema import Config

SWEEP_FIELDS = ["value", "attack", "test_acc", "psnr", "ssim", "label_acc", "success_rate", "epsilon", "jobs",
                "failed", "breaking_point", "run_dir"]


def plan(cfg: Config) -> list[tuple[str, Config]]:
    """One config per sweep value: the defense switched on with its parameter set."""
    s = cfg.sweep
    if not s.defense:
        raise ConfigError("sweep.defense", f"name the defense to sweep; allowed: {', '.join(DEFENSES.names())}")
    spec = DEFENSES.get(s.defense)
    param = s.param or spec.main_param
    names = [f.name for f in fields(spec.params)]
    if param not in names:
        raise ConfigError("sweep.param", f"'{param}' is not a parameter of {s.defense}; allowed: {', '.join(names)}")
    if not s.values:
        raise ConfigError("sweep.values", "give the values to sweep, e.g. sweep.values=[0.001,0.01,0.1]")
    if s.parallel < 1:
        raise ConfigError("sweep.parallel", f"must be >= 1, got {s.parallel}")
    out = []
    for v in s.values:
        raw = cfg.to_dict()
        if s.defense not in raw["client"]["defenses"]:
            raw["client"]["defenses"] = [*raw["client"]["defenses"], s.defense]
        raw.setdefault(s.defense, {})[param] = v
        raw["sweep"] = {"defense": None, "param": None, "values": [], "parallel": 1}
        out.append((f"{s.defense}.{param}={v}", from_dict(raw)))  # validates each value's range
    return out


def _run_one(label: str, cfg: Config, run_dir: Path, log: Path) -> int:
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir.parent / f"{run_dir.name}.yaml"
    cfg_path.write_text(cfg.to_yaml())
    with log.open("w") as f:
        return subprocess.call([sys.executable, "-m", "fedattack", "run", str(cfg_path), "--out", str(run_dir),
                                "--quiet"], stdout=f, stderr=subprocess.STDOUT)


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def collect(values: list, run_dirs: list[Path]) -> list[dict]:
    """sweep.csv's rows: per value and attack, the summary of that value's run."""
    rows = []
    for v, d in zip(values, run_dirs):
        if not (d / "summary.json").is_file():  # written last: the run did not finish
            rows.append({"value": v, "attack": "(run failed)", "run_dir": str(d)})
            continue
        summary = load_run(d).summary()
        for attack, a in summary.attacks.items():
            rows.append({"value": v, "attack": attack, "test_acc": summary.final_test_acc,
                         "psnr": a.psnr, "ssim": a.ssim, "label_acc": a.label_acc,
                         "success_rate": a.success_rate, "epsilon": summary.epsilon, "jobs": a.jobs,
                         "failed": a.failed, "run_dir": str(d)})
    for attack in {r["attack"] for r in rows}:
        mine = [r for r in rows if r["attack"] == attack]
        broken = next((r["value"] for r in mine if r.get("success_rate") is not None and r["success_rate"] == 0), None)
        for r in mine:
            r["breaking_point"] = broken
    return rows


def plot(rows: list[dict], path: Path, defense: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for attack in sorted({r["attack"] for r in rows if r.get("ssim") is not None}):
        mine = [r for r in rows if r["attack"] == attack and r.get("ssim") is not None]
        for ax, key in zip(axes, ("ssim", "psnr")):
            xs, ys = [_num(r[key]) for r in mine], [_num(r["test_acc"]) for r in mine]
            ax.plot(xs, ys, marker="o", label=attack)
            for r, x, y in zip(mine, xs, ys):
                ax.annotate(str(r["value"]), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
                if r["breaking_point"] == r["value"]:
                    ax.scatter([x], [y], s=160, facecolors="none", edgecolors="red")
    axes[0].set(xlabel="mean SSIM of reconstructions (leakage)", ylabel="test accuracy (utility)",
                title=f"{defense}: privacy-utility frontier")
    axes[1].set(xlabel="mean PSNR of reconstructions (dB)", ylabel="test accuracy")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, title="red circle: breaking point")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_sweep(cfg: Config, *, out_dir: Path, quiet: bool = False) -> list[dict]:
    progress = Progress(quiet=quiet)
    runs = plan(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(cfg.to_yaml())
    safe = [label.replace("=", "-").replace("/", "_").replace(" ", "") for label, _ in runs]
    dirs = [out_dir / "runs" / f"{i:02d}_{name}" for i, name in enumerate(safe)]
    progress.print(f"sweep: {len(runs)} audited simulations, {cfg.sweep.parallel} at a time; {out_dir}")

    def one(i: int) -> int:
        t0 = time.perf_counter()
        code = _run_one(runs[i][0], runs[i][1], dirs[i], dirs[i].parent / f"{dirs[i].name}.log")
        progress.print(f"  {runs[i][0]}: {'done' if code == 0 else f'failed (exit {code}, see log)'} "
                       f"in {time.perf_counter() - t0:.0f} s")
        return code

    with ThreadPoolExecutor(max_workers=cfg.sweep.parallel) as pool:
        list(pool.map(one, range(len(runs))))
    rows = collect(list(cfg.sweep.values), dirs)
    with (out_dir / "sweep.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SWEEP_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    plot(rows, out_dir / "frontier.png", cfg.sweep.defense)
    print_table(rows, f"{cfg.sweep.defense} sweep", progress)
    return rows


def print_table(rows: list[dict], title: str, progress: Progress) -> None:
    def f(x, fmt):
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)

    t = Table(title=title)
    for c in ("value", "attack", "test acc", "PSNR", "SSIM", "label acc", "success", "epsilon", "breaking point"):
        t.add_column(c, justify="right")
    for r in rows:
        t.add_row(str(r["value"]), r["attack"], f(r.get("test_acc"), ".3f"), f(r.get("psnr"), ".2f"),
                  f(r.get("ssim"), ".3f"), f(r.get("label_acc"), ".2f"), f(r.get("success_rate"), ".2f"),
                  f(r.get("epsilon"), ".2f"), str(r.get("breaking_point")))
    progress.console.print(t)


def cmd_sweep(ns: argparse.Namespace) -> int:
    cfg = load_config(ns)
    out = Path(ns.out or default_out_dir("sweep-"))
    check_out(out)
    plan(cfg)  # validate every value before anything is written
    rows = run_sweep(cfg, out_dir=out, quiet=ns.quiet)
    if any(r["attack"] == "(run failed)" for r in rows):
        raise FedattackError(f"sweep: some runs failed; see the logs under {out / 'runs'}")
    return 0


COMMANDS = {"sweep": ("privacy-utility frontier: one audited run per defense setting", add_config_args, cmd_sweep)}
