"""The run directory, written as results arrive so nothing computed is lost.

    config.yaml   resolved config          leakage.csv  round x client x attack rows
    rounds.csv    per-round training       images.csv   every scored private image
    clients.csv   each client's samples    exposure.csv recovered share per round and client
    summary.json  headline and means       report.html  what leaked, plots and galleries
    images/       ground truth above reconstruction, per row; images/best/: per sample, its
                  best reconstruction over every round and attack
    errors/       the whole traceback of each failed job (leakage.csv's traceback column)

`RunStore` is the run's one writer: it appends each typed result to the CSV files as it
arrives (flushed and synced: an interrupt never loses a row), writes its images, keeps the
per-image rows in memory and rewrites exposure.csv; `finish` rebuilds summary.json,
exposure.csv and report.html from what is on disk. A run that stops early (an interrupt,
an error) is finished as interrupted: its files hold the results so far, consistently, and
the report says so. `load_run` reads a run directory back into the same typed results.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from fedattack.errors import FedattackError, first_line
from fedattack.experiment import build
from fedattack.metrics.lpips import download_backbone, locate
from fedattack.models import batch_norm_layers, build_model
from fedattack.report import tables
from fedattack.report.exposure import better, exposure, image_rows, owners_of
from fedattack.report.html import render
from fedattack.report.images import save_pair
from fedattack.report.summary import Summary, raised_budgets, run_header, summarize
from fedattack.results import ImageRow, Interruption, JobResult, RoundResult, RunHeader
from fedattack.schema import Config


EXPOSURE_EVERY = 2.0  # seconds between rewrites of exposure.csv while results stream in


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


def lpips_status(cfg: Config) -> str:
    """'' where LPIPS's weights are on this machine, else why not (after the download the
    config consents to, if any)."""
    failed = download_backbone() if cfg.audit.lpips_download else ""
    found, why = locate(cfg.audit.lpips_weights)
    return "" if found else (failed or why)


class RunStore:
    """`partitions`: each client's dataset indices (default: the config's own partitions), for
    exposure; `expected_rounds`: rounds a complete run records (default: fl.rounds);
    `batch_norm`: whether the model trains BatchNorm layers (default: the config's model's);
    `num_classes`: the model's classes (0: not known)."""

    def __init__(self, out_dir: str | Path, *, cfg: Any, partitions: Mapping[int | str, Iterable[int]] | None = None,
                 expected_rounds: int | None = None, batch_norm: bool | None = None, num_classes: int = 0):
        """`cfg`: fedattack's Config, or what an audit of a Flower app records (its `to_yaml`,
        `to_dict` and `audit` section; partitions, rounds and BatchNorm then unknown unless given)."""
        exp = build(cfg) if isinstance(cfg, Config) and (partitions is None or batch_norm is None) else None
        if partitions is None:
            partitions = dict(enumerate(exp.partitions)) if exp is not None else {}
        if batch_norm is None:
            batch_norm = bool(batch_norm_layers(build_model(exp.model_spec))) if exp is not None else False
        if expected_rounds is None:
            expected_rounds = cfg.fl.rounds if isinstance(cfg, Config) else 0
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "images").mkdir(exist_ok=True)
        (self.dir / "config.yaml").write_text(cfg.to_yaml())
        self.header = replace(run_header(cfg.to_dict()), batch_norm=batch_norm, num_classes=num_classes)
        self.save_images = cfg.audit.save_images
        self.expected_rounds = expected_rounds
        self.owners, self.sizes = owners_of(partitions)
        self.lpips_note = lpips_status(cfg)
        self.interrupted: Interruption | None = None
        self._lock = threading.Lock()
        self.results: list[JobResult] = []
        self.rounds: list[RoundResult] = []
        self.images: list[ImageRow] = []
        self.best: dict[int, ImageRow] = {}
        self._exposure_written = -math.inf
        tables.start(self.dir / "leakage.csv", tables.LEAKAGE_FIELDS)
        tables.start(self.dir / "rounds.csv", tables.ROUND_FIELDS)
        tables.start(self.dir / "images.csv", tables.IMAGE_FIELDS)
        tables.write(self.dir / "clients.csv", tables.CLIENT_FIELDS,
                     [{"client": c, "samples": n} for c, n in self.sizes.items()])
        self._write_exposure()

    def add_result(self, res: JobResult) -> None:
        with self._lock:
            self.results.append(res)
            traceback_file = ""
            if res.traceback:
                traceback_file = f"errors/{res.row_id}.txt"
                (self.dir / "errors").mkdir(exist_ok=True)
                (self.dir / traceback_file).write_text(res.traceback)
            rows = image_rows(res, self.owners)
            if rows:
                self.images.extend(rows)
                tables.append_many(self.dir / "images.csv", tables.IMAGE_FIELDS, [tables.image_row(r) for r in rows])
            if self.save_images and (res.truth_pixels is not None or res.recon_pixels is not None):
                save_pair(self.dir / "images" / f"{res.row_id}.png", res.truth_pixels, res.recon_pixels)
                if res.truth_pixels is not None:
                    self._keep_best(res, rows)
            _append(self.dir / "leakage.csv", tables.LEAKAGE_FIELDS,  # last: the row commits the result
                    tables.leakage_row(res, traceback_file=traceback_file))
            if rows:
                self._write_exposure(force=False)

    @property
    def num_results(self) -> int:
        return len(self.results)

    @property
    def num_rounds(self) -> int:
        return len(self.rounds)

    def _keep_best(self, res: JobResult, rows: list[ImageRow]) -> None:
        """images/best/<index>.png: each sample's best reconstruction so far."""
        if res.recon_pixels is None:
            return
        for r in rows:
            if r.index >= 0 and better(r, self.best.get(r.index)):
                self.best[r.index] = r
                (self.dir / "images" / "best").mkdir(exist_ok=True)
                save_pair(self.dir / "images" / "best" / f"{r.index}.png", res.truth_pixels[r.position:r.position + 1],
                          res.recon_pixels[r.position:r.position + 1])

    def add_round(self, row: RoundResult) -> None:
        with self._lock:
            self.rounds.append(row)
            _append(self.dir / "rounds.csv", tables.ROUND_FIELDS, tables.round_row(row))
            self._write_exposure()

    def _write_exposure(self, force: bool = True) -> None:
        """Rewrite exposure.csv; as results stream in, at most every EXPOSURE_EVERY seconds (a round's
        end and finish always rewrite it)."""
        now = time.monotonic()
        if not force and now - self._exposure_written < EXPOSURE_EVERY:
            return
        self._exposure_written = now
        rows = exposure(self.images, self.sizes, [r.round for r in self.rounds if r.round > 0])
        tables.write(self.dir / "exposure.csv", tables.EXPOSURE_FIELDS, [tables.exposure_row(r) for r in rows])

    def mark_interrupted(self, interruption: Interruption) -> None:
        """Record why the run stopped early (finish then reports it as interrupted)."""
        self.interrupted = interruption

    def finish(self, interrupted: Interruption | None = None) -> Summary:
        """Put leakage.csv's and images.csv's rows in one order (they were appended as jobs
        finished), rebuild exposure.csv and write summary.json and report.html from the rows on
        disk; return the summary.

        The run counts as interrupted where `interrupted` or mark_interrupted says why, where an
        exception is on its way out of the caller (finish called from a `finally`), or where
        fewer rounds than expected were recorded."""
        with self._lock:
            stop = interrupted or self.interrupted
            if stop is None:
                exc = sys.exc_info()[1]
                recorded = len([r for r in self.rounds if r.round > 0])
                if exc is not None:
                    stop = Interruption(reason=type(exc).__name__ if isinstance(exc, KeyboardInterrupt) else
                                        f"{type(exc).__name__}: {first_line(exc)}"[:300])
                elif recorded < self.expected_rounds:
                    stop = Interruption(reason=f"{recorded} of {self.expected_rounds} rounds recorded")
            run = load_run(self.dir)
            if not run.cut:  # a table with a line cut by a kill stays as it is, for `fedattack report` to name it
                tables.put_in_order(self.dir / "leakage.csv", tables.LEAKAGE_FIELDS, tables.LEAKAGE_ORDER)
                tables.put_in_order(self.dir / "images.csv", tables.IMAGE_FIELDS, tables.IMAGE_ORDER)
                run = load_run(self.dir)
            run = replace(run, interrupted=stop, lpips_note=self.lpips_note,
                          header=replace(run.header, batch_norm=self.header.batch_norm,  # summary.json keeps them
                                         num_classes=self.header.num_classes))
            return write_report(self.dir, run)


@dataclass
class Run:
    """A run's results, typed: what a RunStore holds, or what a run directory holds."""

    header: RunHeader
    results: list[JobResult]
    rounds: list[RoundResult]
    images: list[ImageRow] = field(default_factory=list)
    sizes: dict = field(default_factory=dict)  # client -> its training samples
    interrupted: Interruption | None = None
    lpips_note: str = ""
    cut: tuple[str, ...] = ()  # lines of the tables left out on reading (cut by a kill), each named

    def summary(self) -> Summary:
        return summarize(self.results, self.rounds, self.header, images=self.images, sizes=self.sizes,
                         interrupted=self.interrupted, lpips_note=self.lpips_note)


def write_report(run_dir: Path, run: Run) -> Summary:
    summary = run.summary()
    _write_atomic(run_dir / "summary.json", json.dumps(summary.to_dict(), indent=2, default=str))
    tables.write(run_dir / "exposure.csv", tables.EXPOSURE_FIELDS, [tables.exposure_row(r) for r in summary.exposure])
    render(run_dir, results=run.results, rounds=run.rounds, images=run.images, summary=summary)
    return summary


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory back into typed results. A directory without summary.json (written
    last) is a run that never finished: it reads back as interrupted."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a directory" if run_dir.exists() else "does not exist"
        raise FedattackError(f"run_dir: {run_dir} {what}; give a run's or a sweep's directory")
    if not (run_dir / "leakage.csv").is_file():
        raise FedattackError(f"run_dir: {run_dir} is not a fedattack run directory (no leakage.csv) or sweep "
                             "directory (no sweep.json)")
    raw, header = _recorded(run_dir / "config.yaml")

    def job(row: dict[str, str]) -> JobResult:
        path = run_dir / row["traceback"] if row.get("traceback") else None
        return tables.job_result(row, traceback=path.read_text() if path and path.is_file() else "")

    cut: list[str] = []
    results = tables.load(run_dir / "leakage.csv", job, cut)
    rounds = tables.load(run_dir / "rounds.csv", tables.round_result, cut)
    images = tables.load(run_dir / "images.csv", tables.image_result, cut)
    sizes = tables.read_sizes(run_dir / "clients.csv")
    saved = run_dir / "summary.json"
    try:
        summary = json.loads(saved.read_text()) if saved.is_file() else None
    except ValueError:
        summary = {}
    if summary is not None and not isinstance(summary, dict):
        summary = {}
    if summary is None:
        interrupted = Interruption(reason="the run did not finish (no summary.json)")
        note = locate(((raw.get("audit") or {}).get("lpips_weights")) if raw else None)[1]
    else:
        stop = summary.get("interrupted")
        interrupted = Interruption.from_dict(stop) if isinstance(stop, dict) else None
        header = replace(header, batch_norm=bool(summary.get("batch_norm", False)),
                         num_classes=int(summary.get("num_classes", 0) or 0))
        note = str(summary.get("lpips_note", ""))
    header = replace(header, raised=_raised(run_dir / "calibration.json", raw))
    return Run(header, results, rounds, images=images, sizes=sizes, interrupted=interrupted, lpips_note=note,
               cut=tuple(cut))


def _recorded(config: Path) -> tuple[dict, RunHeader]:
    """A run directory's config.yaml, and the header it gives; a damaged one is one line naming it."""
    if not config.is_file():
        return {}, RunHeader()
    try:
        raw = yaml.safe_load(config.read_text()) or {}
        if not isinstance(raw, dict):
            raise TypeError(f"it holds {type(raw).__name__}, not a mapping of sections")
        return raw, run_header(raw) if raw else RunHeader()
    except (yaml.YAMLError, TypeError, ValueError, AttributeError, KeyError) as exc:
        raise FedattackError(f"run_dir: {config} is damaged ({type(exc).__name__}: {first_line(exc)}); the report "
                             "reads the config the run recorded there") from None


def _raised(path: Path, raw: dict) -> tuple[str, ...] | None:
    """The budgets calibration raised, from calibration.json (None where there is none to read)."""
    try:
        records = json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None
    return raised_budgets(records, raw) if isinstance(records, list) else None
