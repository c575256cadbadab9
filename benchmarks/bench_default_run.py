"""The default run as a new user runs it: `python -m fedattack run` on configs/default.yaml
(lfw-subset, 8 clients on a Dirichlet(0.5) split, 5 rounds of FedAvg with 2 clients per round,
2 local SGD steps of batch 2 at lr 0.1, a ReLU MLP; every sampled client audited by idlg, dlg
and invgrad), once per seed, each in its own process as the command runs.

Per seed and attack: the run's wall-clock time (Ray start-up and the report included) and final
test accuracy (chance is 0.5), how many audited updates the attack leaked and how many images
it recovered, its mean PSNR beside the flat-image baseline (the blank guess) and the margin,
and the share of the training data the server recovered over the run (exposure.csv's last
"all" row). `load` is the machine's 1-minute load average when the run started (2 cores).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_run(seed: int, overrides: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="fa-default-") as d:
        out = Path(d) / "run"
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "fedattack", "run", f"seed={seed}", *overrides, "--out", str(out),
                               "--quiet"], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return [{"seed": seed, "attack": "(run failed)", "error": (proc.stderr or proc.stdout).strip()[-300:]}]
        summary = json.loads((out / "summary.json").read_text())
        rounds = list(csv.DictReader((out / "rounds.csv").open()))
        exposure = [r for r in csv.DictReader((out / "exposure.csv").open()) if r["client"] == "all"]
        last = exposure[-1]
        acc = " ".join(f"{float(r['test_acc']):.2f}" for r in rounds if r["test_acc"])
        rows = []
        for name, a in summary["attacks"].items():
            rows.append({"seed": seed, "attack": name, "wall s": round(wall, 1), "load": round(load, 1),
                         "final test acc": summary["final_test_acc"], "test acc by round": acc,
                         "updates leaked": f"{a['leaked']} of {a['jobs'] - a['failed']}",
                         "images recovered": f"{a['recovered']} of {a['images']}", "PSNR dB": a["psnr"],
                         "blank-guess PSNR dB": a["baseline_psnr"], "margin dB": a["margin"], "SSIM": a["ssim"],
                         "s/job": a["seconds"],
                         "samples recovered (run)": f"{last['recovered']} of {last['samples']} "
                                                    f"({100 * float(last['share']):.1f}%)",
                         "headline = exposure.csv": summary["headline"]["exposed_share"] == float(last["share"])})
        return rows


def seeds(quick: bool) -> list[int]:
    """The seeds to run: FEDATTACK_SEEDS (e.g. "0" or "0,1": fewer seeds on a busy machine), else 0, 1 and 2
    (0 with quick). A value that is not comma-separated non-negative integers raises ValueError saying so."""
    chosen = os.environ.get("FEDATTACK_SEEDS", "").strip()
    if not chosen:
        return [0] if quick else [0, 1, 2]
    parts = [v.strip() for v in chosen.split(",")]
    if not all(re.fullmatch(r"[0-9]+", v) for v in parts):
        raise ValueError(f"FEDATTACK_SEEDS={chosen!r}: give comma-separated non-negative integer seeds, e.g. 0 or 0,1 "
                         f"(unset: 0, 1 and 2)")
    return [int(v) for v in parts]


def check(quick: bool) -> None:
    seeds(quick)


def run(quick: bool = False) -> list[dict]:
    overrides = ["fl.rounds=2", "audit.attacks=[idlg]"] if quick else []
    rows: list[dict] = []
    for seed in seeds(quick):
        rows += one_run(seed, overrides)
    return rows
