"""A sweep's results: per value and seed the run's summary; per attack its breaking point; the
answer (the weakest setting at which no attack recovers any image, and what it costs in test
accuracy against the reference run); sweep.csv, sweep.json, the plots and sweep.html.

Values are ordered as given, weakest setting first. An attack's **breaking point** is the
first value from which on it recovers no image in any seed; an attack that recovered nothing
anywhere, the reference run included, has none ("never succeeded"); one that still recovers
images at the last value is "not stopped". The **answer** is the first value from which on no
attack recovers any image in any seed; its cost is its test accuracy minus the reference
run's, paired by seed (mean, and standard deviation over the seeds where there are several).
"""

from __future__ import annotations

import csv
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from fedattack.report.plots import percent_top, save
from fedattack.report.summary import Summary
from fedattack.text import counted, plural

NEVER = "never succeeded"
NOT_STOPPED = "not stopped"

SWEEP_FIELDS = ["value", "seed", "reference", "attack", "test_acc", "psnr", "baseline_psnr", "margin", "ssim", "lpips",
                "label_acc", "updates", "updates_leaked", "images", "images_recovered", "recovery_rate",
                "exposed_share", "epsilon", "jobs", "failed", "interrupted", "breaking_point", "run_dir"]


@dataclass
class SweepRun:
    """One audited run of a sweep: a value (or the reference) under one seed."""

    value: Any
    seed: int
    label: str
    run_dir: Path
    reference: bool = False
    exit_code: int | None = None
    summary: Summary | None = None

    @property
    def finished(self) -> bool:
        return self.summary is not None


@dataclass
class Answer:
    key: str
    values: list
    seeds: list[int]
    reference: str  # what the reference run is, in words
    breaking: dict[str, str] = field(default_factory=dict)  # attack -> value as text, NEVER or NOT_STOPPED
    safe_value: Any = None
    safe_found: bool = False
    acc_safe: tuple[float, float] | None = None  # mean, std over seeds
    acc_reference: tuple[float, float] | None = None
    cost: tuple[float, float] | None = None  # paired by seed: safe minus reference
    num_classes: int = 0  # the reference's model's classes (0: not known)
    failed_runs: list[str] = field(default_factory=list)
    nothing_leaked: bool = False  # no attack recovered an image in any finished run, the reference's included
    strongest_tried: Any = None  # the strongest value with a finished run
    leaking_seeds: list[int] = field(default_factory=list)  # the seeds under which some attack leaked there
    any_tried: bool = False  # some run at a swept value finished

    def at_chance(self) -> bool:
        """The reference's test accuracy is no better than guessing one of its classes (within
        0.02): a model that did not learn has no utility to lose."""
        return bool(self.num_classes and self.acc_reference and self.acc_reference[0] <= 1 / self.num_classes + 0.02)

    def sentence(self) -> str:
        """The answer in one paragraph."""
        seeds = f"{plural(len(self.seeds), 'seed')} {', '.join(map(str, self.seeds))}"
        if self.nothing_leaked:
            text = (f"No attack recovered any image at any value of {self.key}, nor in the {self.reference} "
                    f"({seeds}): at these attack budgets the sweep cannot tell the settings apart; raise the "
                    f"attacks' iterations or the rounds audited before reading any value as safe.")
        elif not self.any_tried:
            text = f"No run at a value of {self.key} finished ({seeds}): the sweep has no answer."
        elif not self.safe_found:
            leaking = sorted(self.leaking_seeds)
            under = (f"({seeds})" if leaking == sorted(self.seeds) else
                     f"under {plural(len(leaking), 'seed')} {', '.join(map(str, leaking))} (of {seeds})")
            text = (f"No value of {self.key} stopped every attack: at the strongest setting whose run finished "
                    f"({fmt_value(self.strongest_tried)}) some attack still recovered images {under}.")
        else:
            text = (f"The weakest setting at which no attack recovers any image is {self.key} = "
                    f"{fmt_value(self.safe_value)} (and every stronger value tried; {seeds}).")
            if self.acc_safe and self.acc_reference and self.at_chance():
                text += (f" Test accuracy there: {self.acc_safe[0]:.3f}, against {self.acc_reference[0]:.3f} for the "
                         f"{self.reference}, which is at chance ({self.num_classes} classes): its model did not "
                         "learn, so the sweep cannot tell what the setting costs (more rounds, fl.rounds, can).")
            elif self.acc_safe and self.acc_reference and self.cost:
                spread = (f" ± {self.cost[1]:.3f} (std over seeds, paired by seed)" if len(self.seeds) > 1
                          else " (one seed: no uncertainty; set sweep.seeds=[0,1,2] for one)")
                text += (f" Test accuracy there: {self.acc_safe[0]:.3f}, against {self.acc_reference[0]:.3f} for the "
                         f"{self.reference}: a cost of {-self.cost[0]:.3f}{spread}."
                         if self.cost[0] < 0 else
                         f" Test accuracy there: {self.acc_safe[0]:.3f}, against {self.acc_reference[0]:.3f} for the "
                         f"{self.reference}: no cost (a change of {self.cost[0]:+.3f}{spread}).")
        if self.failed_runs:
            n = len(self.failed_runs)
            text += (f" {counted(n, 'run')} did not finish and {plural(n, 'is', 'are')} left out: "
                     f"{', '.join(self.failed_runs)}.")
        return text


def fmt_value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _std(xs: list[float]) -> float:
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def _leaks(run: SweepRun, attack: str | None = None) -> bool:
    if run.summary is None:
        return False
    return any(a.leaked for name, a in run.summary.attacks.items() if attack is None or name == attack)


def reference_runs(runs: list[SweepRun]) -> list[SweepRun]:
    """The reference's runs: its own, or, where the configured value is one of the swept ones,
    that value's runs."""
    return [r for r in runs if r.reference] or [r for r in runs if r.label.endswith("(as configured)")]


def analyze(runs: list[SweepRun], *, key: str, values: list, seeds: list[int], reference: str) -> Answer:
    ans = Answer(key=key, values=list(values), seeds=list(seeds), reference=reference)
    ans.failed_runs = [r.label for r in runs if not r.finished]
    swept = [r for r in runs if not r.reference]
    by_value = [[r for r in swept if r.value == v and r.finished] for v in values]
    attacks = sorted({name for r in runs if r.summary for name in r.summary.attacks})
    for attack in attacks:
        leaked = [any(_leaks(r, attack) for r in rs) for rs in by_value]
        anywhere = any(leaked) or any(_leaks(r, attack) for r in runs if r.reference)
        if not anywhere:
            ans.breaking[attack] = NEVER
            continue
        stop = next((i for i in range(len(values)) if not any(leaked[i:]) and by_value[i]), None)
        ans.breaking[attack] = fmt_value(values[stop]) if stop is not None else NOT_STOPPED
    ans.nothing_leaked = any(r.finished for r in runs) and not any(_leaks(r) for r in runs if r.finished)
    tried = [i for i in range(len(values)) if by_value[i]]
    ans.any_tried = bool(tried)
    ans.strongest_tried = values[tried[-1]] if tried else None
    ans.leaking_seeds = sorted({r.seed for r in by_value[tried[-1]] if _leaks(r)}) if tried else []
    refs = {r.seed: r for r in reference_runs(runs) if r.finished}
    ref_accs = [r.summary.final_test_acc for r in refs.values() if r.summary.final_test_acc is not None]
    if ref_accs:
        ans.acc_reference = (float(np.mean(ref_accs)), _std(ref_accs))
        ans.num_classes = max(r.summary.header.num_classes for r in refs.values())
    safe = next((i for i in range(len(values)) if by_value[i] and not any(_leaks(r) for rs in by_value[i:] for r in rs)),
                None)
    if safe is not None and not ans.nothing_leaked:
        ans.safe_found, ans.safe_value = True, values[safe]
        at = {r.seed: r for r in by_value[safe]}
        accs = [r.summary.final_test_acc for r in at.values() if r.summary.final_test_acc is not None]
        pairs = [(at[s].summary.final_test_acc, refs[s].summary.final_test_acc) for s in at if s in refs
                 and at[s].summary.final_test_acc is not None and refs[s].summary.final_test_acc is not None]
        if accs and ref_accs and pairs:
            ans.acc_safe = (float(np.mean(accs)), _std(accs))
            diffs = [a - b for a, b in pairs]
            ans.cost = (float(np.mean(diffs)), _std(diffs))
    return ans


def rows(runs: list[SweepRun], answer: Answer) -> list[dict]:
    """sweep.csv: one row per run and attack (a run that did not finish: one row saying so)."""
    out = []
    for r in runs:
        base = {"value": "" if r.value is None else fmt_value(r.value), "seed": r.seed, "reference": r.reference,
                "run_dir": str(r.run_dir)}
        s = r.summary
        if s is None:
            why = ("run stopped by a signal" if r.exit_code in (130, 143) else
                   f"run failed, exit {r.exit_code}" if r.exit_code else "run did not finish")
            out.append({**base, "attack": f"({why})"})
            continue
        h = s.headline
        for name, a in s.attacks.items():
            scored = a.jobs - a.failed
            out.append({**base, "attack": name, "test_acc": s.final_test_acc, "psnr": a.psnr,
                        "baseline_psnr": a.baseline_psnr, "margin": a.margin, "ssim": a.ssim, "lpips": a.lpips,
                        "label_acc": a.label_acc, "updates": scored, "updates_leaked": a.leaked, "images": a.images,
                        "images_recovered": a.recovered,
                        "recovery_rate": round(a.recovered / a.images, 4) if a.images else None,
                        "exposed_share": h.exposed_share if h else None, "epsilon": s.epsilon, "jobs": a.jobs,
                        "failed": a.failed, "interrupted": s.interrupted is not None,
                        "breaking_point": answer.breaking.get(name, "")})
    return out


def write_csv(path: Path, table: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SWEEP_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in table])


def _spread(pair: tuple[float, float] | None) -> dict | None:
    """(mean, std over seeds) as JSON says it."""
    return None if pair is None else {"mean": pair[0], "std_over_seeds": pair[1]}


def write_json(path: Path, answer: Answer, table: list[dict]) -> None:
    path.write_text(json.dumps({"key": answer.key, "values": answer.values, "seeds": answer.seeds,
                                "reference": answer.reference, "breaking_points": answer.breaking,
                                "safe_value": answer.safe_value if answer.safe_found else None,
                                "test_acc_at_safe_value": _spread(answer.acc_safe),
                                "test_acc_reference": _spread(answer.acc_reference),
                                "accuracy_change": _spread(answer.cost), "failed_runs": answer.failed_runs,
                                "nothing_leaked": answer.nothing_leaked,
                                "answer": answer.sentence(), "rows": table}, indent=2, default=str))


# -- per value, over seeds ----------------------------------------------------------------------

def per_value(table: list[dict], values: list) -> dict[str, list[dict]]:
    """attack -> one point per value: means and standard deviations over seeds."""
    out: dict[str, list[dict]] = {}
    attacks = sorted({r["attack"] for r in table if not r["attack"].startswith("(")})
    for attack in attacks:
        pts = []
        for v in values:
            mine = [r for r in table if r["attack"] == attack and r["value"] == fmt_value(v)]  # a reference at v too
            if not mine:
                continue

            def stat(k: str) -> tuple[float, float]:
                xs = [float(r[k]) for r in mine if r.get(k) is not None and not math.isnan(float(r[k]))]
                return (float(np.mean(xs)), _std(xs)) if xs else (math.nan, math.nan)

            pts.append({"value": v, "acc": stat("test_acc"), "psnr": stat("psnr"), "baseline": stat("baseline_psnr"),
                        "margin": stat("margin"), "rate": stat("recovery_rate"), "n": len(mine),
                        "leaked": sum(int(r["updates_leaked"] or 0) for r in mine),
                        "updates": sum(int(r["updates"] or 0) for r in mine)})
        out[attack] = pts
    return out


def _xaxis(ax, values: list) -> tuple[list, bool]:
    """x positions for `values`: the numbers themselves (log scale over two decades or more),
    else their places in the list with the values as labels."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        pos = [v for v in values if v > 0]
        if len(pos) == len(values) and max(pos) / min(pos) >= 100:
            ax.set_xscale("log")
        if all(isinstance(v, int) for v in values):  # batch sizes, epochs: ticks at the values, no 1.5
            ax.set_xticks(list(values), [str(v) for v in values])
            ax.minorticks_off()
        return list(values), True
    ax.set_xticks(range(len(values)), [fmt_value(v) for v in values], rotation=20)
    return list(range(len(values))), False


def _rate_top(points: dict[str, list[dict]]) -> float:
    """The top of a recovery-rate axis (per cent) for every attack's points (plots.percent_top)."""
    rates = [100 * p["rate"][0] for pts in points.values() for p in pts if not math.isnan(p["rate"][0])]
    return percent_top(max(rates, default=0.0))


def plot_protocol(path: Path, points: dict[str, list[dict]], values: list, key: str) -> None:
    """The protocol map: per attack, PSNR (beside the blank guess) and recovery rate against the
    swept key, and test accuracy against it; error bars: std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ran = {fmt_value(p["value"]) for pts in points.values() for p in pts}
    values = [v for v in values if fmt_value(v) in ran] or list(values)  # a value whose runs all failed: no place
    index = {fmt_value(v): i for i, v in enumerate(values)}
    for ax in axes:
        xs_all, numeric = _xaxis(ax, values)
    for attack, pts in points.items():
        xs = [p["value"] if numeric else index[fmt_value(p["value"])] for p in pts]
        axes[0].errorbar(xs, [p["psnr"][0] for p in pts], yerr=[p["psnr"][1] for p in pts], marker="o",
                         capsize=3, label=attack)
        axes[1].errorbar(xs, [100 * p["rate"][0] for p in pts], yerr=[100 * p["rate"][1] for p in pts], marker="o",
                         capsize=3, label=attack)
    first = next(iter(points.values()), [])
    if first:
        xs = [p["value"] if numeric else index[fmt_value(p["value"])] for p in first]
        axes[0].plot(xs, [p["baseline"][0] for p in first], color="grey", ls="--", label="blank guess")
        axes[2].errorbar(xs, [p["acc"][0] for p in first], yerr=[p["acc"][1] for p in first], marker="s", capsize=3,
                         color="C2", label="test accuracy")
    axes[0].set(xlabel=key, ylabel="PSNR (dB)", title="Reconstruction PSNR")
    axes[1].set(xlabel=key, ylabel="private images recovered (%)", title="Recovery rate")
    axes[1].set_ylim(bottom=0, top=max(axes[1].get_ylim()[1], _rate_top(points)))
    axes[2].set(xlabel=key, ylabel="final test accuracy", title="Utility", ylim=(0, 1.02))
    save(fig, axes, path)


def frontier_legend_title(answer: Answer) -> str | None:
    """The frontier legend explains the red circles only where some attack has a breaking point."""
    circled = any(v not in (NEVER, NOT_STOPPED) for v in answer.breaking.values())
    return "red circle: breaking point" if circled else None


def plot_frontier(path: Path, points: dict[str, list[dict]], answer: Answer, reference: list[SweepRun]) -> None:
    """Test accuracy against leakage (PSNR margin over the blank guess; recovery rate), one
    line per attack through the values, breaking points circled, the reference as a star in each
    attack's colour. Value labels stack upwards by attack, so attacks that meet at one point (the
    weakest setting often leaks alike) keep their labels apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colours: dict[str, str] = {}
    for i, (attack, pts) in enumerate(points.items()):
        for ax, k, scale in ((axes[0], "margin", 1), (axes[1], "rate", 100)):
            xs = [scale * p[k][0] for p in pts]
            ys = [p["acc"][0] for p in pts]
            bars = ax.errorbar(xs, ys, xerr=[scale * p[k][1] for p in pts], yerr=[p["acc"][1] for p in pts],
                               marker="o", capsize=2, label=attack)
            colours[attack] = bars[0].get_color()
            for p, x, y in zip(pts, xs, ys):
                ax.annotate(fmt_value(p["value"]), (x, y), fontsize=7, xytext=(3, 3 + 8 * i),
                            textcoords="offset points", color=colours[attack])
                if answer.breaking.get(attack) == fmt_value(p["value"]):
                    ax.scatter([x], [y], s=180, facecolors="none", edgecolors="red", zorder=3)
    refs = [r.summary for r in reference if r.summary is not None]
    if refs:
        acc = [s.final_test_acc for s in refs if s.final_test_acc is not None]
        for ax, k in ((axes[0], "margin"), (axes[1], "rate")):
            for name in refs[0].attacks:
                a = [s.attacks[name] for s in refs if name in s.attacks]
                x = (np.mean([v.margin for v in a if v.margin is not None]) if k == "margin" else
                     100 * np.mean([v.recovered / v.images for v in a if v.images]) if any(v.images for v in a)
                     else math.nan)
                if acc and not math.isnan(x):
                    ax.scatter([x], [np.mean(acc)], marker="*", s=160, color=colours.get(name, "black"),
                               edgecolors="black", linewidths=0.6, zorder=4)
        axes[0].scatter([], [], marker="*", s=100, color="white", edgecolors="black", linewidths=0.6,
                        label=f"{answer.reference} (in each attack's colour)")
    axes[0].axvline(0.5, color="grey", ls=":", lw=1)
    axes[0].set(xlabel="PSNR margin over a blank guess (dB), mean over seeds", ylabel="final test accuracy",
                title=f"Privacy-utility frontier: {answer.key}")
    axes[1].set(xlabel="private images recovered (%)", ylabel="final test accuracy", title="Recovery rate vs utility")
    axes[1].set_xlim(left=0, right=max(axes[1].get_xlim()[1], _rate_top(points)))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.margins(y=0.12)  # room above the top point for its value labels, stacked upwards by attack
    handles, labels = axes[0].get_legend_handles_labels()
    rows = 1 + len(handles) // 5
    if handles:  # below the plots: inside, it covers the points at the strongest settings
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(handles)), fontsize=8,
                   title=frontier_legend_title(answer), title_fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07 + 0.05 * rows if handles else 0, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pm(stat: tuple[float, float], digits: int = 2, n: int = 1, scale: float = 1.0) -> str:
    m, s = stat
    if math.isnan(m):
        return "–"
    return f"{scale * m:.{digits}f}" + (f" ± {scale * s:.{digits}f}" if n > 1 else "")


def _run_link(r: SweepRun) -> str:
    """A run's name, linked to its report where it has one (a run the sweep's stop kept from
    starting has none)."""
    name = f"{_e(r.label)}, seed {r.seed}"
    if not (r.run_dir / "report.html").is_file():
        return name
    return f"<a href=\"{_e(quote(str(Path(r.run_dir.parent.name) / r.run_dir.name / 'report.html')))}\">{name}</a>"


def render_html(path: Path, *, answer: Answer, table: list[dict], points: dict[str, list[dict]], runs: list[SweepRun],
                plots: list[str], values: list | None = None) -> None:
    """sweep.html; `values`: the per-value table's rows (default: the swept values)."""
    values = answer.values if values is None else values
    swept = {fmt_value(v) for v in answer.values}
    head = ["value", "test accuracy"] + [f"{a}: {k}" for a in points for k in ("PSNR (dB)", "margin (dB)",
                                                                              "recovered", "updates leaked")]
    def row(label: str, at: dict[str, list[dict]], v: Any, row_class: str = "") -> str:
        """One table row: `at` holds each attack's points, the one at value `v` shown."""
        mine = [p for pts in at.values() for p in pts if p["value"] == v]
        n = mine[0]["n"] if mine else 1
        cells = [_e(label), _pm(mine[0]["acc"] if mine else (math.nan, math.nan), 3, n)]
        for attack in points:
            p = next((p for p in at.get(attack, []) if p["value"] == v), None)
            cells += ["–"] * 4 if p is None else [_pm(p["psnr"], 1, n), _pm(p["margin"], 1, n),
                                                   _pm(p["rate"], 0, n, 100) + " %", f"{p['leaked']} of {p['updates']}"]
        return f"<tr{row_class}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"

    body = []
    for v in values:
        safe = answer.safe_found and fmt_value(v) == fmt_value(answer.safe_value)
        body.append(row(fmt_value(v) + ("" if fmt_value(v) in swept else " (configured: the reference)"), points, v,
                        ' class="safe"' if safe else ""))
    unvalued = [r for r in table if r.get("reference") and r["value"] == ""]  # a defense sweep's: the defense off
    if unvalued:
        body.append(row(answer.reference, per_value(unvalued, [""]), ""))
    breaking = "".join(f"<tr><td>{_e(a)}</td><td>{_e(b)}</td></tr>" for a, b in answer.breaking.items())
    links = "".join(f"<li>{_run_link(r)}{'' if r.finished else ' (did not finish)'}</li>" for r in runs)
    highlight = "; the highlighted row is the answer." if answer.safe_found else "."
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fedattack sweep: {_e(answer.key)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1180px;padding:0 1em;color:#222}}
.answer{{background:#f6f8fa;border:1px solid #d0d7de;border-radius:8px;padding:.8em 1.2em;font-size:16px}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #d0d7de;padding:3px 7px;text-align:right}}
th{{background:#f6f8fa}} tr.safe td{{background:#e6f4ea}} img{{max-width:100%}}</style></head><body>
<h1>Sweep of {_e(answer.key)}</h1>
<div class="answer"><b>Answer.</b> {_e(answer.sentence())}</div>
<h2>Per value</h2><p>Means over seeds (± standard deviation where several){highlight}
<i>Recovered</i>: share of the private images in audited updates that the attack recovered.</p>
<table><tr>{''.join(f'<th>{_e(h)}</th>' for h in head)}</tr>{''.join(body)}</table>
<h2>Breaking points</h2><p>The first of the swept values, in the order given (the reference run is not one of them),
from which on the attack recovers no image in any seed.</p>
<table><tr><th>attack</th><th>breaking point</th></tr>{breaking}</table>
<h2>Plots</h2>{''.join(f'<p><img src="{_e(quote(p))}" alt="{_e(p)}"></p>' for p in plots)}
<h2>Runs</h2><ul>{links}</ul><p>sweep.csv holds one row per run and attack; sweep.json the answer.</p>
</body></html>"""
    path.write_text(doc)
