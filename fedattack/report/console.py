"""Live progress in the console: rounds and attack results as they arrive, and a status line
at least every `status_every` seconds while attack jobs are outstanding (rich).

Everything printed is plain text: attack names, error messages and paths are never read as
rich markup (an error message holding `[/x]` prints as it is).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
import warnings
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedattack.attacks.scope import idle_attacks
from fedattack.report.summary import (Summary, batch_norm_caveat, budget_caveat, failed_caveat, ran_budgets,
                                      sums_only)
from fedattack.results import JobResult, RoundResult, describe_defenses
from fedattack.schema import Config
from fedattack.text import counted, plural

STATUS_EVERY = 30.0  # seconds: the longest silence while attack jobs run


def _missing(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _f(x: float | None, fmt: str) -> str:
    """x in `fmt`, "-" where missing; a value that rounds to zero prints without a sign (no -0.00)."""
    if _missing(x):
        return "-"
    text = format(x, fmt)
    return format(0.0, fmt.replace("+", "")) if float(text) == 0 else text


def duration(seconds: float) -> str:
    """A time span in words, to the second under 90 s, to the half minute under 10 min (so that
    status lines 30 s apart never read the same), then to the minute and the tenth of an hour."""
    if seconds < 90:
        return f"{max(0.0, seconds):.0f} s"
    if seconds < 600:
        half = round(seconds / 30)
        return f"{half // 2} min" + (" 30 s" if half % 2 else "")
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def plain_table(title: str, columns: list[str]) -> Table:
    table = Table(title=Text(title))
    for col in columns:
        table.add_column(Text(col), justify="right")
    return table


def add_plain_row(table: Table, cells: list[str]) -> None:
    table.add_row(*[Text(str(c)) for c in cells])


def server_words(mode: str) -> str:
    """The server mode as the first line of a command says it."""
    return "malicious (the server modifies the model it sends)" if mode == "malicious" else "honest-but-curious"


class Progress:
    """Console progress of a run. `status_every`: seconds between status lines while attack
    jobs are outstanding (0: none)."""

    def __init__(self, console: Console | None = None, quiet: bool = False, status_every: float = STATUS_EVERY):
        # piped into a file, rich would wrap at 80 columns: lines stay whole, tables get room
        self.console = console or Console(stderr=False, highlight=False,
                                          width=None if sys.stdout.isatty() else 160)
        self.quiet = quiet
        self.status_every = status_every
        self.concurrency = 1
        self.margin = 0.5  # dB: audit.success_margin, from header()
        self.submitted = 0
        self.done = 0
        self.job_seconds: dict[str, list[float]] = {}  # attack -> its finished jobs' seconds
        self.attacks: list[str] = []  # the attacks the run audits with (from header())
        self.audit_off = ""  # why the run trains without an audit (Config.audit_off), "" when it audits
        self.failures: dict[str, list] = {}  # attack (with its variant) -> [jobs that did not finish, first reason]
        self._first_submit: float | None = None
        self._last_print = time.monotonic()
        self._lock = threading.Lock()
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    # -- printing, never as markup ----------------------------------------------------------
    def print(self, msg: str | Text) -> None:
        """Live progress: silent when quiet."""
        if not self.quiet:
            self.answer(msg)

    def answer(self, msg: str | Text) -> None:
        """What a command answers (its table, its headline, where its report is): printed even when quiet."""
        self.console.print(msg if isinstance(msg, Text) else Text(str(msg)), soft_wrap=True)
        self._last_print = time.monotonic()

    def note(self, msg: str) -> None:
        """Something the user should know before the audit's results (`Auditor.on_note`: attacks a
        SecAgg+ run leaves idle, adaptive variants, calibration): part of the answer, printed even
        when quiet."""
        self.answer(f"note: {msg}")

    def calibration(self, msg: str, level: int | None = None) -> None:
        """A calibration's news (`Auditor.on_calibration`): printed at every level."""
        self.print(msg)

    def auditing(self, cfg: Config, concurrency: int | None = None) -> list[str]:
        """Take the audit's settings (what the status line and the verdicts need); the attacks
        that run (those the run's scope leaves idle do not: the audit's note says why)."""
        self.concurrency = max(1, concurrency or cfg.audit.max_concurrent)
        self.audit_off = cfg.audit_off()
        self.margin = cfg.audit.success_margin
        idle = idle_attacks(cfg.audit.attacks, cfg.client.defenses)
        self.attacks = [] if self.audit_off else [a for a in cfg.audit.attacks if a not in idle]
        return self.attacks

    def header(self, cfg: Config, run_dir: object) -> None:
        """The run's first line: what runs, under which defense and server mode, and where it goes."""
        running = self.auditing(cfg)
        mode = server_words(cfg.server.mode)
        audit = (f"audit off ({self.audit_off})" if self.audit_off
                 else f"auditing with {', '.join(running) or 'nothing'}")
        self.print(f"fedattack: {cfg.fl.num_clients} clients, {counted(cfg.fl.rounds, 'round')} of {cfg.fl.strategy}, "
                   f"{cfg.fl.clients_per_round} per round; defense: {describe_defenses(cfg.to_dict())}; "
                   f"server: {mode}; {audit}; run directory {run_dir}")

    def round_done(self, row: RoundResult, done: int, submitted: int) -> None:
        with self._lock:
            self.submitted = max(self.submitted, submitted)
            if submitted and self._first_submit is None:
                self._first_submit = time.monotonic()
        line = Text()
        audit = "audit off" if self.audit_off else f"audit {done}/{submitted} jobs done"
        line.append(f"round {row.round}", style="bold")
        line.append(f"  updates {row.replies} (errors {row.errors})  train loss {_f(row.train_loss, '.3f')}  "
                    f"test acc {_f(row.test_acc, '.3f')}  {audit}  {_f(row.seconds, '.1f')} s")
        self.print(line)
        if row.error:
            self.print(Text(f"  a client failed: {row.error}", style="yellow"))
        self._ensure_ticker()

    def result(self, r: JobResult) -> None:
        with self._lock:
            self.done += 1
            if not math.isnan(r.seconds):
                self.job_seconds.setdefault(r.attack, []).append(r.seconds)
        who = "aggregate" if r.scope == "aggregate" else f"client {r.client}"
        tag = " (adaptive)" if r.adaptive else ""
        line = Text(f"  round {r.round} · {who} · {r.attack}{tag} · ")
        if not r.ok:
            with self._lock:
                self.failures.setdefault(f"{r.attack}{tag}", [0, r.error])[0] += 1
            line.append(r.status, style="red")
            line.append(f": {r.error}")
            self.print(line)
            return
        if r.unscored:
            line.append(f"reconstructed, labels {r.labels_text} · ")
            line.append("unscored", style="yellow")
            line.append(f": {r.unscored} · {r.seconds:.1f} s")
            self.print(line)
            return
        s = r.score
        if math.isnan(s.psnr):  # labels, no images to score: the report's words
            line.append(("" if _missing(s.label_acc) else f"labels {s.label_acc * 100:.0f}% · ") + "labels only")
            line.append(f" · {r.seconds:.1f} s")
            self.print(line)
            return
        line.append(f"PSNR {_f(s.psnr, '.1f')} dB (blank guess {_f(s.baseline_psnr, '.1f')}) · "
                    f"SSIM {_f(s.ssim, '.2f')} · "
                    + ("" if _missing(s.label_acc) else f"labels {s.label_acc * 100:.0f}% · ")
                    + f"{s.recovered}/{s.num_images} recovered · ")
        if r.success:
            line.append("LEAK", style="red")
        elif not math.isnan(s.margin) and s.margin <= self.margin:
            line.append("no leak beyond a blank guess", style="green")
        else:  # the report's words: better than a blank guess, yet no image reached the SSIM bar
            line.append("above the blank guess, no image recovered", style="yellow")
        line.append(f" · {r.seconds:.1f} s")
        self.print(line)

    # -- status while attack jobs are outstanding -------------------------------------------
    def status_line(self) -> str | None:
        """'audit: 6/18 jobs done, ...' while jobs are outstanding, else None."""
        with self._lock:
            left = self.submitted - self.done
            if left <= 0:
                return None
            running = min(left, self.concurrency)
            msg = f"audit: {self.done}/{self.submitted} attack jobs done, {running} running, {left - running} queued"
            waiting_on = [a for a in self.attacks if a not in self.job_seconds]
            if self.job_seconds and waiting_on:  # a cheap attack's jobs say nothing of a costly one's
                finish = plural(len(waiting_on), "finishes", "finish")
                msg += f"; no estimate until {', '.join(waiting_on)} {finish} a job"
            elif self.job_seconds:  # every update gets every attack: the attacks' means, each counted once
                mean = sum(sum(s) / len(s) for s in self.job_seconds.values()) / len(self.job_seconds)
                msg += (f"; about {duration(left * mean / self.concurrency)} left "
                        f"({mean:.0f} s per job, {self.concurrency} at a time)")
            else:
                now = time.monotonic()
                waited = max(0.0, now - (self._first_submit or now))
                msg += f"; none finished in {duration(waited)} so far, no estimate yet"
        return msg

    def _ensure_ticker(self) -> None:
        if self.quiet or self.status_every <= 0 or (self._ticker is not None and self._ticker.is_alive()):
            return
        if self.status_line() is None:
            return
        self._stop.clear()
        self._ticker = threading.Thread(target=self._tick, name="fedattack-status", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        step = min(1.0, self.status_every / 4)
        while not self._stop.wait(step):
            line = self.status_line()
            if line is None:
                return
            if time.monotonic() - self._last_print >= self.status_every:
                self.print(line)

    def waiting(self, pending: int) -> None:
        """The run waits for its last attack jobs (after training)."""
        with self._lock:
            self.submitted = max(self.submitted, self.done + pending)
        self.print(f"waiting for {counted(pending, 'attack job')}; a status line follows at least every "
                   f"{self.status_every:.0f} s")
        self._ensure_ticker()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)

    # -- tables -----------------------------------------------------------------------------
    def summary_table(self, summary: Summary, title: str = "Leakage by attack") -> None:
        if self.audit_off and not summary.attacks:  # an empty table would read as "nothing leaked"
            self.answer(f"no update was audited ({self.audit_off})")
            return
        table = plain_table(title, ["attack", "jobs", "failed/error", "PSNR dB", "blank-guess PSNR dB", "margin dB",
                                    "SSIM", "label acc", "updates leaked", "s/job"])
        for name, a in summary.attacks.items():
            add_plain_row(table, [name, a.jobs, a.failed, _f(a.psnr, ".2f"), _f(a.baseline_psnr, ".2f"),
                                  _f(a.margin, "+.2f"), _f(a.ssim, ".2f"), _f(a.label_acc, ".2f"),
                                  f"{a.leaked}/{a.jobs - a.failed}" if a.jobs > a.failed and a.success_rate is not None
                                  else "-",
                                  _f(a.seconds, ".1f")])
        self.console.print(table)
        for attack, (count, first) in self.failures.items():  # shown with --quiet as well
            self.answer(f"{attack}: {counted(count, 'job')} without a reconstruction (the first: {first})")
        h = summary.headline
        if h is not None and h.samples:
            updates = "aggregate updates (SecAgg+ sums)" if sums_only(summary) else "updates"
            scored = (f"{h.leaked_updates} of {h.audited_updates} audited {updates} leaked" if h.audited_updates
                      else f"no {updates.split(' (')[0].removesuffix('s')} was scored (no attack produced images)")
            self.answer(f"{scored}; "
                        f"{h.exposed_samples} of {h.samples} training samples recovered "
                        f"({_f(100 * h.exposed_share if h.exposed_share is not None else None, '.1f')}%)"
                        + (" — the run was interrupted" if summary.interrupted is not None else ""))
            if h.audited_updates and not h.leaked_updates and ran_budgets(summary):
                self.print(budget_caveat(summary.header, summary))
            if failed_caveat(summary):
                self.print(failed_caveat(summary))
            if h.audited_updates and batch_norm_caveat(summary.header):
                self.print(batch_norm_caveat(summary.header))


@contextmanager
def library_logs(verbose: bool):
    """Flower's and Ray's warnings stay out of the console unless `verbose`: Flower's
    `fraction_evaluate` notice and run_simulation's deprecation banner (its logger, raised to
    ERROR), Ray's FutureWarning about accelerator environment variables."""
    if verbose:
        yield
        return
    logger = logging.getLogger("flwr")
    before = logger.level
    logger.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"ray(\.|$)")
        warnings.filterwarnings("ignore", message=r".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO.*")
        try:
            yield
        finally:
            logger.setLevel(before)
