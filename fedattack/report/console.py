"""Live progress in the console: rounds and attack results as they arrive (rich)."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table

from fedattack.report.summary import Summary
from fedattack.results import JobResult, RoundResult


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


class Progress:
    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(stderr=False, highlight=False)
        self.quiet = quiet

    def print(self, msg: str) -> None:
        if not self.quiet:
            self.console.print(msg)

    def round_done(self, row: RoundResult, done: int, submitted: int) -> None:
        self.print(f"[bold]round {row.round}[/bold]  updates {row.replies} (errors {row.errors})  "
                   f"train loss {_f(row.train_loss, '.3f')}  test acc {_f(row.test_acc, '.3f')}  "
                   f"audit {done}/{submitted} jobs done  {_f(row.seconds, '.1f')} s")

    def result(self, r: JobResult) -> None:
        who = "aggregate" if r.scope == "aggregate" else f"client {r.client}"
        tag = " (adaptive)" if r.adaptive else ""
        if not r.ok:
            self.print(f"  round {r.round} · {who} · {r.attack}{tag} · [red]{r.status}[/red]: {r.error}")
            return
        if r.unscored:
            labels = " ".join(str(int(v)) for v in r.recon_labels) if r.recon_labels is not None else "-"
            self.print(f"  round {r.round} · {who} · {r.attack}{tag} · reconstructed, labels {labels} · "
                       f"[yellow]unscored[/yellow]: {r.unscored} · {r.seconds:.1f} s")
            return
        s = r.score
        mark = "[red]LEAK[/red]" if r.success else "[green]safe[/green]"
        self.print(f"  round {r.round} · {who} · {r.attack}{tag} · PSNR {_f(s.psnr, '.1f')} dB · "
                   f"SSIM {_f(s.ssim, '.3f')} · labels {_f(s.label_acc * 100, '.0f')}% · "
                   f"{s.recovered}/{s.num_images} recovered · {mark} · {r.seconds:.1f} s")

    def summary_table(self, summary: Summary, title: str = "Leakage by attack") -> None:
        table = Table(title=title)
        for col in ("attack", "jobs", "failed", "PSNR dB", "SSIM", "label acc", "success rate", "s/job"):
            table.add_column(col, justify="right")
        for name, a in summary.attacks.items():
            table.add_row(name, str(a.jobs), str(a.failed), _f(a.psnr, ".2f"), _f(a.ssim, ".3f"),
                          _f(a.label_acc, ".2f"), _f(a.success_rate, ".2f"), _f(a.seconds, ".1f"))
        self.console.print(table)
