"""The run directory, written as results arrive so nothing computed is lost.

    config.yaml   resolved config          leakage.csv  round x client x attack rows
    rounds.csv    per-round training       summary.json totals and means per attack
    report.html   plots and galleries      images/      ground truth above reconstruction
    errors/       the whole traceback of each failed job (leakage.csv's traceback column)

`RunStore` appends each typed result to the CSV files as it arrives and keeps it in memory;
`finish` computes the summary from those results and writes summary.json and report.html
once. `load_run` reads a run directory back into the same typed results.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from fedattack.errors import FedattackError
from fedattack.report import tables
from fedattack.report.html import render
from fedattack.report.images import save_pair
from fedattack.report.summary import Summary, summarize
from fedattack.results import JobResult, RoundResult, RunHeader
from fedattack.schema import Config


def default_out_dir(prefix: str = "") -> str:
    """runs/<prefix><timestamp>: where a run goes when no --out is given."""
    return str(Path("runs") / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}")


def check_out(out: str | Path | None) -> None:
    """A run never writes into a directory that holds something already."""
    if out and Path(out).exists() and any(Path(out).iterdir()):
        raise FedattackError(f"--out: {out} exists and is not empty; choose a new directory")


class RunStore:
    def __init__(self, out_dir: str | Path, *, cfg: Config):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "images").mkdir(exist_ok=True)
        (self.dir / "config.yaml").write_text(cfg.to_yaml())
        self.header = RunHeader.from_config(cfg.to_dict())
        self.save_images = cfg.audit.save_images
        self._lock = threading.Lock()
        self.results: list[JobResult] = []
        self.rounds: list[RoundResult] = []
        tables.start(self.dir / "leakage.csv", tables.LEAKAGE_FIELDS)
        tables.start(self.dir / "rounds.csv", tables.ROUND_FIELDS)

    def add_result(self, res: JobResult) -> None:
        with self._lock:
            self.results.append(res)
            traceback_file = ""
            if res.traceback:
                traceback_file = f"errors/{res.row_id}.txt"
                (self.dir / "errors").mkdir(exist_ok=True)
                (self.dir / traceback_file).write_text(res.traceback)
            tables.append(self.dir / "leakage.csv", tables.LEAKAGE_FIELDS,
                          tables.leakage_row(res, traceback_file=traceback_file))
            if self.save_images and (res.truth_pixels is not None or res.recon_pixels is not None):
                save_pair(self.dir / "images" / f"{res.row_id}.png", res.truth_pixels, res.recon_pixels)

    def add_round(self, row: RoundResult) -> None:
        with self._lock:
            self.rounds.append(row)
            tables.append(self.dir / "rounds.csv", tables.ROUND_FIELDS, tables.round_row(row))

    def finish(self) -> Summary:
        """Write summary.json and report.html from the results so far; return the summary."""
        with self._lock:
            run = Run(self.header, list(self.results), list(self.rounds))
        return write_report(self.dir, run)


@dataclass
class Run:
    """A run's results, typed: what a RunStore holds, or what a run directory holds."""

    header: RunHeader
    results: list[JobResult]
    rounds: list[RoundResult]

    def summary(self) -> Summary:
        return summarize(self.results, self.rounds, self.header)


def write_report(run_dir: Path, run: Run) -> Summary:
    summary = run.summary()
    (run_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    render(run_dir, results=run.results, rounds=run.rounds, summary=summary)
    return summary


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory (config.yaml, leakage.csv, rounds.csv, errors/) back into typed results."""
    run_dir = Path(run_dir)
    if not (run_dir / "leakage.csv").is_file():
        raise FedattackError(f"run_dir: {run_dir} is not a fedattack run directory (no leakage.csv)")
    config = run_dir / "config.yaml"
    header = RunHeader.from_config(yaml.safe_load(config.read_text()) or {}) if config.is_file() else RunHeader()
    results = []
    for row in tables.read(run_dir / "leakage.csv"):
        path = run_dir / row["traceback"] if row.get("traceback") else None
        results.append(tables.job_result(row, traceback=path.read_text() if path and path.is_file() else ""))
    rounds = [tables.round_result(row) for row in tables.read(run_dir / "rounds.csv")]
    return Run(header, results, rounds)
