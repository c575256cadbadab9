"""The run directory, written as results arrive so nothing computed is lost.

    config.yaml   resolved config          leakage.csv  round x client x attack rows
    rounds.csv    per-round training       summary.json totals and means per attack
    report.html   plots and galleries      images/      ground truth above reconstruction
    errors/       the whole traceback of each failed job (leakage.csv's traceback column)

`RunStore` is the run's one writer: it appends each typed result to the CSV files (flushed
to disk) and writes its images as the result arrives, and keeps nothing else. `finish`
rebuilds summary.json and report.html from what is on disk, also after an interrupt, with
the interruption recorded (summary.json's `interrupted`). `load_run` reads a run directory
back into the same typed results.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from fedattack.errors import FedattackError
from fedattack.report import tables
from fedattack.report.html import render
from fedattack.report.images import save_pair
from fedattack.report.summary import Summary, summarize
from fedattack.results import Interruption, JobResult, RoundResult, RunHeader
from fedattack.schema import Config


def default_out_dir(prefix: str = "") -> str:
    """runs/<prefix><timestamp>: where a run goes when no --out is given."""
    return str(Path("runs") / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}")


def check_out(out: str | Path | None, what: str = "--out") -> None:
    """A run writes only into a new or empty directory that it can create and write; checked
    before anything starts, leaving nothing behind."""
    if not out:
        return
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise FedattackError(f"{what}: {out} exists and is not a directory; choose a new directory")
    if p.is_dir() and any(p.iterdir()):
        raise FedattackError(f"{what}: {out} exists and is not empty; choose a new directory")
    check_writable(p, what)


def check_writable(path: str | Path, what: str) -> None:
    """`path` (a directory, existing or not) can be created and written: its nearest existing
    ancestor is a directory where a file can be made. The probe file is removed at once."""
    p = Path(path).expanduser().absolute()
    base = p
    while not base.exists():
        if base.parent == base:
            break
        base = base.parent
    if not base.is_dir():
        raise FedattackError(f"{what}: cannot create {path}: {base} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=base, prefix=".fedattack-probe-")
    except OSError as exc:
        raise FedattackError(f"{what}: cannot write to {base} ({exc.strerror or type(exc).__name__})") from None
    os.close(fd)
    os.unlink(probe)


def _append(path: Path, fields: list[str], row: dict) -> None:
    """One row, on disk when this returns (flushed and synced): an interrupt never loses it."""
    with path.open("a", newline="") as f:
        csv.DictWriter(f, fieldnames=fields).writerow(row)
        f.flush()
        os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunStore:
    def __init__(self, out_dir: str | Path, *, cfg: Config):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "images").mkdir(exist_ok=True)
        (self.dir / "config.yaml").write_text(cfg.to_yaml())
        self.header = RunHeader.from_config(cfg.to_dict())
        self.save_images = cfg.audit.save_images
        self._lock = threading.Lock()
        self.num_results = 0
        self.num_rounds = 0
        tables.start(self.dir / "leakage.csv", tables.LEAKAGE_FIELDS)
        tables.start(self.dir / "rounds.csv", tables.ROUND_FIELDS)

    def add_result(self, res: JobResult) -> None:
        with self._lock:
            self.num_results += 1
            traceback_file = ""
            if res.traceback:
                traceback_file = f"errors/{res.row_id}.txt"
                (self.dir / "errors").mkdir(exist_ok=True)
                (self.dir / traceback_file).write_text(res.traceback)
            if self.save_images and (res.truth_pixels is not None or res.recon_pixels is not None):
                save_pair(self.dir / "images" / f"{res.row_id}.png", res.truth_pixels, res.recon_pixels)
            _append(self.dir / "leakage.csv", tables.LEAKAGE_FIELDS,  # last: the row commits the result
                    tables.leakage_row(res, traceback_file=traceback_file))

    def add_round(self, row: RoundResult) -> None:
        with self._lock:
            self.num_rounds += 1
            _append(self.dir / "rounds.csv", tables.ROUND_FIELDS, tables.round_row(row))

    def finish(self, interrupted: Interruption | None = None) -> Summary:
        """Write summary.json and report.html from the rows on disk (`interrupted`: why the run
        stopped early, None if it finished); return the summary."""
        with self._lock:
            run = replace(load_run(self.dir), interrupted=interrupted)
            return write_report(self.dir, run)


@dataclass
class Run:
    """A run's results, typed: what a RunStore holds, or what a run directory holds."""

    header: RunHeader
    results: list[JobResult]
    rounds: list[RoundResult]
    interrupted: Interruption | None = None

    def summary(self) -> Summary:
        return summarize(self.results, self.rounds, self.header, self.interrupted)


def write_report(run_dir: Path, run: Run) -> Summary:
    summary = run.summary()
    _write_atomic(run_dir / "summary.json", json.dumps(summary.to_dict(), indent=2, default=str))
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
    return Run(header, results, rounds, _interruption(run_dir))


def _interruption(run_dir: Path) -> Interruption | None:
    """What summary.json says stopped the run; a directory without one never finished."""
    path = run_dir / "summary.json"
    if not path.is_file():
        return Interruption(reason="the run did not finish (no summary.json)")
    try:
        raw = json.loads(path.read_text()).get("interrupted")
    except (ValueError, AttributeError):
        return None
    return Interruption.from_dict(raw) if isinstance(raw, dict) else None
