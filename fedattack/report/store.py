"""The run directory, written as results arrive so nothing computed is lost.

    config.yaml   resolved config          leakage.csv  round x client x attack rows
    rounds.csv    per-round training       summary.json totals and means per attack
    report.html   plots and galleries      images/      ground truth above reconstruction
"""

from __future__ import annotations

import csv
import json
import math
import threading
from collections import defaultdict
from pathlib import Path

import numpy as np

from fedattack.server.jobs import JobResult

LEAKAGE_FIELDS = ["round", "client", "attack", "defense", "adaptive", "scope", "status", "psnr", "ssim", "mse",
                  "label_acc", "success", "recovered", "num_images", "seconds", "device", "epsilon", "error"]
ROUND_FIELDS = ["round", "train_loss", "test_loss", "test_acc", "replies", "errors", "audited_clients", "jobs",
                "scope", "epsilon", "seconds"]


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


class RunStore:
    def __init__(self, out_dir: str | Path, config_yaml: str, header: dict | None = None):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "images").mkdir(exist_ok=True)
        (self.dir / "config.yaml").write_text(config_yaml)
        self.header = header or {}
        self._lock = threading.Lock()
        self.results: list[JobResult] = []
        self.rounds: list[dict] = []
        self._init_csv("leakage.csv", LEAKAGE_FIELDS)
        self._init_csv("rounds.csv", ROUND_FIELDS)

    def _init_csv(self, name: str, fields: list[str]) -> None:
        with (self.dir / name).open("w", newline="") as f:
            csv.DictWriter(f, fieldnames=fields, extrasaction="ignore").writeheader()

    def _append(self, name: str, fields: list[str], row: dict) -> None:
        with (self.dir / name).open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields, extrasaction="ignore").writerow(row)

    def add_result(self, res: JobResult, save_images: bool = True) -> None:
        with self._lock:
            self.results.append(res)
            self._append("leakage.csv", LEAKAGE_FIELDS, res.row())
            if save_images and res.truth_pixels is not None:
                from fedattack.report.images import save_pair

                save_pair(self.dir / "images" / image_name(res), res.truth_pixels, res.recon_pixels)

    def add_round(self, row: dict) -> None:
        with self._lock:
            self.rounds.append(row)
            self._append("rounds.csv", ROUND_FIELDS, row)

    def finish(self, extra: dict | None = None) -> dict:
        summary = summarize(read_csv(self.dir / "leakage.csv"), read_csv(self.dir / "rounds.csv"))
        summary.update(self.header)
        summary.update(extra or {})
        (self.dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        from fedattack.report.html import render

        render(self.dir)
        return summary


def image_name(res: JobResult) -> str:
    tag = "_adaptive" if res.adaptive else ""
    return f"r{int(res.round):03d}_c{res.client}_{res.attack}{tag}.png"


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _mean(xs) -> float | None:
    xs = [x for x in xs if not math.isnan(x)]
    return round(float(np.mean(xs)), 4) if xs else None


def summarize(leakage: list[dict], rounds: list[dict]) -> dict:
    """Per-attack means over all rows, plus training totals."""
    by_attack: dict[str, list[dict]] = defaultdict(list)
    for row in leakage:
        key = row["attack"] + (" (adaptive)" if row.get("adaptive") == "True" else "")
        by_attack[key].append(row)
    attacks = {}
    for name, rows in sorted(by_attack.items()):
        ok = [r for r in rows if r["status"] == "ok"]
        attacks[name] = {
            "jobs": len(rows), "failed": len(rows) - len(ok),
            "psnr": _mean([_num(r["psnr"]) for r in ok]), "ssim": _mean([_num(r["ssim"]) for r in ok]),
            "mse": _mean([_num(r["mse"]) for r in ok]), "label_acc": _mean([_num(r["label_acc"]) for r in ok]),
            "success_rate": _mean([1.0 if r["success"] == "True" else 0.0 for r in ok]),
            "seconds": _mean([_num(r["seconds"]) for r in rows]),
            "scope": sorted({r["scope"] for r in rows}),
        }
    final = rounds[-1] if rounds else {}
    eps = [_num(r.get("epsilon")) for r in rounds]
    eps = [e for e in eps if not math.isnan(e)]
    return {
        "epsilon": max(eps) if eps else None,
        "attacks": attacks,
        "rounds": len([r for r in rounds if int(_num(r["round"]) or 0) > 0]),
        "final_test_acc": _num(final.get("test_acc")) if final else None,
        "client_errors": int(sum(_num(r.get("errors") or 0) for r in rounds)),
        "defense": leakage[0]["defense"] if leakage else None,
    }
