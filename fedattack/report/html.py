"""report.html: what leaked, at the top; then where, over rounds, by whom, and the pictures.

Sections: the headline (leaked updates, exposed share of the training data, the strongest
attack, the worst-exposed client, defense and server mode, utility, the rules that decide
what counts as leaked); a client x round matrix coloured by the best attack's SSIM; exposure
over rounds, worst-exposed clients first; per attack, scores beside the flat-image baseline;
plots; every audited update; galleries with per-image scores.

Every piece of text and every attribute is escaped: names of attacks, clients, files and
error messages are data, never markup.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fedattack.attacks.scope import client_only
from fedattack.defenses import audit_notes
from fedattack.report import plots
from fedattack.report.exposure import ALL, best_per_sample, worst_clients
from fedattack.report.images import PAD, columns
from fedattack.report.summary import (Summary, batch_norm_caveat, budget_caveat, failed_caveat, ran_budgets,
                                      secagg_scope, sums_only)
from fedattack.results import (ImageRow, JobResult, RoundResult, RunHeader, describe_calibration, optimizer_words,
                               unsimulated)
from fedattack.text import counted, plural

MAX_GALLERIES = 60  # per-update galleries shown (leaks first when there are more)
MAX_SAMPLES = 32  # best reconstructions per sample shown
DASH = "–"

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em auto;max-width:1180px;color:#222;
 padding:0 1em}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.banner{background:#fff3cd;border:1px solid #e0b400;padding:.7em 1em;border-radius:6px;margin:1em 0}
.headline{background:#f6f8fa;border:1px solid #d0d7de;border-radius:8px;padding:.8em 1.2em;font-size:15px}
.headline li{margin:.3em 0} .big{font-size:22px;font-weight:600;margin:.2em 0 .5em}
.leak{color:#b00020;font-weight:600} .safe{color:#1a7f37;font-weight:600} .muted{color:#666}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #d0d7de;padding:3px 7px} th{background:#f6f8fa;text-align:center}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap} td.t{text-align:left}
td.w{text-align:left;white-space:nowrap}
table.matrix td{text-align:center;min-width:58px;font-size:12px;line-height:1.25}
.note{font-size:13px;color:#555;max-width:1000px}
.gallery{display:inline-block;vertical-align:top;margin:6px 10px 12px 0;border:1px solid #e5e5e5;padding:4px}
.gallery .cap{font-size:13px;font-weight:600;margin:2px 0 4px}
.cells{display:flex;flex-wrap:wrap;gap:0}
.cell{display:inline-block;text-align:center;font-size:11px;margin-right:2px}
.px{image-rendering:pixelated;background-repeat:no-repeat;display:block}
img{image-rendering:pixelated} .plot{image-rendering:auto;max-width:100%}
.ok{color:#b00020} .held{color:#8a6d00}
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def link(path: str) -> str:
    """A relative path as an attribute value (percent-encoded, then escaped)."""
    return esc(quote(path))


def num(x: float | None, digits: int = 2, *, pct: bool = False, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    if pct:
        return f"{100 * x:.1f}%"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def who(client: int | str) -> str:
    return "aggregate (SecAgg sum)" if client == "aggregate" else f"client {client}"


def rounds_of(done: int, header: RunHeader) -> str:
    """"3 of 5 rounds", or "1 round" where the run names no round count (an app's run may not)."""
    if header.configured_rounds:
        return f"{done} of {counted(header.configured_rounds, 'round')}"
    return counted(done, "round")


def held_back(images: list[ImageRow], header: RunHeader) -> list[ImageRow]:
    """Images that meet the per-image rule (SSIM threshold, above the flat guess) in a row that
    stays within the blank-guess margin, so they are not counted as recovered."""
    return [i for i in images if not i.recovered and not math.isnan(i.ssim) and i.ssim >= header.success_ssim
            and i.ssim > i.baseline_ssim]


def verdict(r: JobResult, margin: float, held: int = 0) -> tuple[str, str]:
    """(words, css class) for one attack on one update; `held`: its images held back by the margin rule."""
    if r.status != "ok":
        return f"{r.status}", "muted"
    s = r.score
    if r.unscored:
        return ("reconstructed, unscored" if s.num_images else "unscored"), "muted"
    if math.isnan(s.psnr):
        return "labels only", "muted"
    if r.success:
        return f"leaked {s.recovered} of {counted(s.num_images, 'image')}", "leak"
    if math.isnan(s.margin) or s.margin <= margin:
        if held:  # say what the row holds: "no leakage" alone reads false beside a sharp image
            return (f"within the blank-guess margin as a whole; {counted(held, 'image')} "
                    f"{plural(held, 'meets', 'meet')} the SSIM rule (\u25cb, not counted)"), "held"
        return "no leakage beyond a blank guess", "safe"
    return "above the blank guess, no image recovered", "safe"


def table(head: list[str], rows: list[list[tuple[str, str]]], cls: str = "") -> str:
    """An HTML table; cells are (already escaped html, css class)."""
    h = "".join(f"<th>{esc(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td class='{esc(k)}'>{v}</td>" for v, k in row) + "</tr>" for row in rows)
    return f"<table class='{esc(cls)}'><tr>{h}</tr>{body}</table>"


def _server(header: RunHeader, sums: bool = False) -> str:
    """The server's role in words; `sums`: under SecAgg+ what it observes is each round's sum."""
    if header.server_mode == "malicious":
        return ("<b>malicious</b> &mdash; the server modified the model it sent (e.g. Robbing the Fed's imprint "
                "block), so the clients trained that model: its training loss and test accuracy are not the "
                "honest deployment's")
    seen = "each round's sum of the updates" if sums else "the updates"
    return f"<b>honest-but-curious</b> &mdash; the protocol as configured; the server only observes {seen}"


def headline(summary: Summary, results: list[JobResult], images: list[ImageRow]) -> str:
    h, header = summary.headline, summary.header
    rounds_done = summary.rounds
    parts = []
    stop = summary.interrupted
    if stop is not None:
        why = f" ({esc(stop.reason)})" if stop.reason else ""
        lost = (f"; {stop.abandoned_jobs} attack jobs still running then have no result" if stop.abandoned_jobs
                else "; attack jobs still running then have no result")
        parts.append(
            f"<div class='banner'><b>This run was interrupted</b>{why} after {rounds_of(rounds_done, header)}. "
            f"Everything below is what was recorded before it stopped "
            f"({counted(len(results), 'attack result')}){lost}. The CSV files hold the same "
            "results.</div>")
    items = []
    sums = sums_only(summary)
    idle, running = _scope(header, results) if sums else ((), ())
    unscored = unscored_only(results)
    if (h is None or h.audited_updates == 0) and sums:
        big = ("No sum of updates was scored (no attack on the sum produced images)." if running
               else "No sum of updates was scored: SecAgg+ hides each client's update in its round's sum, and no "
                    "configured attack runs on a sum.")
    elif (h is None or h.audited_updates == 0) and unscored:
        big = ("No client update was scored: the attacks ran without the private images to score against "
               "(why: below). Their reconstructions are shown unmeasured.")
    elif h is None or h.audited_updates == 0:
        big = ("No client update was scored (no attack produced images)." if results
               else "No client update was audited (no attack job ran).")
    else:
        cls = "leak" if h.leaked_updates else "safe"
        what = "aggregate updates (each round's sum under SecAgg+)" if sums else "client updates"
        big = (f"<span class='{cls}'>{h.leaked_updates} of {h.audited_updates}</span> audited {what} "
               f"leaked at least one private image.")
    if sums:
        items.append(esc(secagg_scope(idle, running, key="attacks" if header.sums else "audit.attacks")))
    if h is not None and h.samples:
        share = num(h.exposed_share, 4, pct=True)
        items.append(f"The server recovered <b>{h.exposed_samples} of {h.samples}</b> training samples "
                     f"(<b>{share}</b> of all clients' data) over {counted(rounds_done, 'round')}; "
                     f"{counted(h.audited_samples, 'sample')} appeared in audited updates (exposure.csv).")
    if h is not None and h.strongest_attack and not unscored:
        a = summary.attacks.get(h.strongest_attack)
        if a is not None and a.leaked:
            items.append(f"Strongest attack: <b>{esc(h.strongest_attack)}</b> &mdash; leaked {a.leaked} of "
                         f"{a.jobs - a.failed} updates it scored, {counted(a.recovered, 'image')}; "
                         "mean PSNR margin over a "
                         f"blank guess: {num(a.margin, 2, sign=True)} dB.")
        else:
            items.append(f"No attack recovered an image. Closest to leaking: <b>{esc(h.strongest_attack)}</b> "
                         f"(mean PSNR margin over a blank guess: {num(a.margin if a else None, 2, sign=True)} dB)."
                         + (f" {esc(budget_caveat(header, summary))}" if ran_budgets(summary) else ""))
    if failed_caveat(summary):
        items.append(esc(failed_caveat(summary)))
    if h is not None and h.audited_updates and batch_norm_caveat(header):
        items.append(esc(batch_norm_caveat(header)))
    if h is not None and h.worst_client is not None and h.worst_client_recovered:
        pct = h.worst_client_recovered / h.worst_client_samples if h.worst_client_samples else None
        source = " from the sums" if sums else ""
        items.append(f"Worst-exposed client: <b>{esc(who(h.worst_client))}</b> &mdash; {h.worst_client_recovered} "
                     f"of its {counted(h.worst_client_samples, 'sample')} recovered{source} ({num(pct, 3, pct=True)}).")
    items.append(f"Defense in force: <b>{esc(header.defense)}</b>"
                 + "".join(f" ({esc(note)})" for note in audit_notes(header.defenses))
                 + f". Server: {_server(header, sums)}.")
    acc = summary.final_test_acc
    measured = acc is not None and not (isinstance(acc, float) and math.isnan(acc))
    items.append((f"Utility: test accuracy <b>{num(acc, 3)}</b> after {rounds_of(rounds_done, header)}" if measured else
                  "Utility: not measured (no test split was evaluated)")
                 + (f"; {counted(summary.client_errors, 'client error')}"
                    + (f" (the first: {esc(summary.client_error)})" if summary.client_error else "")
                    if summary.client_errors else "") + ".")
    if summary.epsilon is not None:
        items.append(f"Differential privacy: the largest epsilon a round reported is {num(summary.epsilon, 2)} "
                     "(at the defense's delta; DP-SGD's and local DP's cover one round of one client's training, "
                     "Flower's central DP the rounds so far; rounds.csv has each round's).")
    rules = (f"An image counts as <b>recovered</b> when its matched reconstruction reaches SSIM &ge; "
             f"{header.success_ssim:.2f} and beats the best flat (constant grey) image's SSIM on it. An attack on "
             f"an update counts only when its mean PSNR beats the same flat image's by more than "
             f"{header.success_margin:.1f} dB (the <i>margin</i>); within that, it shows <i>no leakage beyond a "
             f"blank guess</i>.")
    held = held_back(images, header)
    if held:
        rules += (f" {counted(len(held), 'image')} reached the SSIM rule in such updates and "
                  f"{plural(len(held), 'is', 'are')} not counted (&#9675; in the galleries).")
    clients = (f" with {counted(header.num_clients, 'client')} ({header.clients_per_round} per round)"
               if header.num_clients else "")
    described = [esc(header.dataset), esc(header.model), esc(header.strategy) + clients, esc(header.protocol)]
    idle = _scope(header, results)[0] if sums else ()
    facts = (", ".join(p for p in described if p) + "; attacks: "
             f"{esc(', '.join(header.configured_attacks) or 'none')}"
             + (f" ({esc(', '.join(idle))} not run under SecAgg+)" if idle else "") + "; "
             + (f"seed {header.seed}." if header.seeded else "no seed: the strategy's own client sampling, attacks "
                f"initialized from seed {header.seed}."))
    parts.append("<div class='headline'><div class='big'>" + big + "</div><ul>"
                 + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
                 f"<p class='note'>{rules}</p><p class='note'>Run: {facts}</p></div>")
    return "".join(parts)


def unscored_only(results: list[JobResult]) -> bool:
    """Whether every attack that finished ran without ground truth (an app's clients sent none)."""
    ok = [r for r in results if r.ok]
    return bool(ok) and all(r.unscored for r in ok)


def _scope(header: RunHeader, results: list[JobResult]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Under SecAgg+: the configured attacks that did not run (they need one client's update)
    and those that attack the sum. An app's run names no attacks in its header: those that
    ran, by their results."""
    configured = header.configured_attacks or tuple(sorted({r.attack for r in results}))
    idle = client_only(configured)
    return idle, tuple(a for a in configured if a not in idle)


def _colour(ssim: float) -> str:
    """White (SSIM <= 0) to red (SSIM 1)."""
    v = 0.0 if math.isnan(ssim) else min(1.0, max(0.0, ssim))
    g = int(round(255 - 190 * v))
    return f"rgb(255,{g},{g})"


def _beats(a: JobResult, b: JobResult) -> bool:
    """On one update: leaked first, then SSIM; on a tie the attack first by name, plain before adaptive."""
    if (a.success, a.score.ssim) != (b.success, b.score.ssim):
        return (a.success, a.score.ssim) > (b.success, b.score.ssim)
    return (a.attack, a.adaptive) < (b.attack, b.adaptive)


def matrix(results: list[JobResult], rounds: int) -> str:
    """Clients x rounds; each cell the best attack's SSIM on that update (among the attacks that
    leaked, where one did: the attack named is one that leaked), a dot where it leaked."""
    best: dict[tuple, JobResult] = {}
    leaked: set[tuple] = set()
    for r in results:
        if not r.ok or math.isnan(r.score.ssim):
            continue
        key = (r.client, r.round)
        if key not in best or _beats(r, best[key]):
            best[key] = r
        if r.success:
            leaked.add(key)
    if not best:
        return "<p class='muted'>No update was scored.</p>"
    clients = sorted({c for c, _ in best}, key=lambda c: (isinstance(c, str), c if isinstance(c, int) else 0, str(c)))
    cols = sorted({rnd for _, rnd in best} | set(range(1, rounds + 1)))
    rows = []
    for c in clients:
        row = [(esc(who(c)), "t")]
        for rnd in cols:
            r = best.get((c, rnd))
            if r is None:
                row.append((f"<span class='muted'>{DASH}</span>", ""))
                continue
            dot = " &#9679;" if (c, rnd) in leaked else ""
            base = r.score.baseline_ssim if not math.isnan(r.score.baseline_ssim) else 0.0
            above = max(0.0, (r.score.ssim - base) / max(1e-9, 1.0 - base))  # 0 at the blank guess, 1 at SSIM 1
            row.append((f"<div style='background:{_colour(above)};padding:2px'>"
                        f"<b>{num(r.score.ssim, 2)}</b>{dot}<br><span style='color:#333'>{esc(r.label)}</span></div>", ""))
        rows.append(row)
    update = ("that round's sum of updates" if "aggregate" in clients else "that client's update in that round")
    sums = " Under SecAgg+ the server never sees one client's update: each row is a round's sum." \
        if "aggregate" in clients else ""
    legend = (f"<p class='note'>Each cell: the best SSIM any attack reached on {update} "
              "(the mean over the update's images; where an attack leaked, the best of those that did), and the "
              "attack; white at the blank guess's SSIM (or below) to "
              "red at 1; &#9679; the update leaked "
              "at least one image; "
              f"{DASH} the client was not sampled or not scored that round.{sums}</p>")
    return table(["client \\ round", *[str(x) for x in cols]], rows, "matrix") + legend


def exposure_table(summary: Summary) -> str:
    rows = summary.exposure
    if not rows:
        scored = summary.headline is not None and summary.headline.audited_updates
        return ("<p class='note'>Exposure per training sample is not shown: the updates came without the samples' "
                "dataset indices (an app's own loader), so a sample audited in two rounds could not be counted "
                "once.</p>" if scored else "<p class='muted'>No update was scored.</p>")
    worst = [r for r in worst_clients(rows) if r.audited or r.recovered]
    last = max(r.round for r in rows)
    everyone = next((r for r in rows if r.client == ALL and r.round == last), None)
    body = []
    for r in ([everyone] if everyone else []) + worst:
        body.append([(esc("all clients" if r.client == ALL else who(r.client)), "t"), (str(r.samples), "n"),
                     (str(r.audited), "n"), (str(r.recovered), "n"), (num(r.share, 3, pct=True), "n"),
                     (num(r.best_ssim, 2), "n")])
    untouched = len([r for r in worst_clients(rows) if not (r.audited or r.recovered)])
    seen = "had an image in a scored sum of updates (SecAgg+)" if sums_only(summary) else "had an audited update scored"
    note = (f"<p class='note'>After round {last}. Worst-exposed clients first; {counted(untouched, 'client')} "
            f"never {seen}. A sample counts once, however many rounds and attacks recovered it.</p>")
    return table(["client", "training samples", "in audited updates", "recovered", "recovered share",
                  "best image SSIM so far"], body) + note


def calibration_section(run_dir: Path) -> str:
    """What calibration chose (calibration.json), where the run calibrated its attacks."""
    path = run_dir / "calibration.json"
    try:
        records = json.loads(path.read_text()) if path.is_file() else []
    except ValueError:
        return ""
    if not records:
        return ""
    rows = []
    for r in records:
        p = r.get("protocol") or {}
        epochs = p.get("local_epochs") or 1
        steps = (counted(epochs, "epoch") if p.get("local_steps") == 0 else counted(p.get("local_steps", "?"), "step")
                 + (f" in {epochs} epochs" if epochs > 1 else ""))
        extras = optimizer_words(optimizer=str(p.get("optimizer", "sgd")), momentum=p.get("momentum") or 0,
                                 nesterov=bool(p.get("nesterov")), weight_decay=p.get("weight_decay") or 0)
        extras += [f"FedProx mu {p['proximal_mu']:g}"] if p.get("proximal_mu") else []
        setting = (f"{counted(p.get('num_examples', '?'), 'image')}, {steps} of batch {p.get('batch_size', '?')} "
                   f"at lr {p.get('lr', '?')}" + "".join(f", {e}" for e in extras))
        fresh = ""
        if r.get("skipped"):
            chosen, gain = f"skipped: {r['skipped']}", ""
        else:
            check = r.get("held_out") or {}
            chosen = describe_calibration(r.get("tuned") or {}, check) + unsimulated(r.get("unmodelled_defenses"))
            gain = f"{r.get('default_psnr', float('nan')):.1f} &rarr; {r.get('best_psnr', float('nan')):.1f}"
            fresh = f" + {check['cases']} fresh" if check.get("cases") else ""
        rows.append(f"<tr><td>{esc(r.get('attack', ''))}</td><td>{esc(setting)}</td>"
                    f"<td>{esc(chosen)}</td><td>{gain}</td>"
                    f"<td>{r.get('cases', '')}{fresh}</td><td>{r.get('seconds', '')}</td></tr>")
    sources = sorted({str(r["data"]) for r in records if r.get("data")})
    data = f" ({esc('; '.join(sources))})" if sources else ""
    skipped = ("<p><b>Calibration was asked for and skipped every time</b>: the attacks ran with their configured "
               "parameters (the table says why).</p>" if all(r.get("skipped") for r in records) else "")
    return ("<h2>Calibration</h2>" + skipped + "<p class='note'>Before attacking, the server tunes each attack on "
            f"client updates it simulates with its own data{data}, never the clients': the same model, protocol and "
            "update defenses. "
            "PSNR: mean over the simulated updates, configured &rarr; best found; a choice is used only where it "
            "also beats the configured values on as many fresh simulated updates; then on/off settings are tried "
            "flipped, each kept only where its mean is better there and it wins on the fresh updates; then the "
            "iterations, and after them the restarts, double while that leaks more (up to the configured factors), "
            "a larger count kept only where it also wins on the fresh updates; last, the output may be pulled toward "
            "its mean grey (shrink), by the same rule. Clients whose example counts fall in one power-of-two band "
            "(3-4, 5-8, 9-16, ...) share the calibration of the first of them.</p>"
            "<table><tr><th>attack</th><th>setting</th><th>chosen</th><th>PSNR (dB)</th><th>cases</th>"
            "<th>seconds</th></tr>" + "".join(rows) + "</table>")


def attack_table(summary: Summary) -> str:
    if not summary.attacks:
        return "<p class='muted'>No attack results.</p>"
    rows = []
    for name, a in summary.attacks.items():
        scored = a.jobs - a.failed
        rows.append([(esc(name), "t"), (str(a.jobs), "n"), (str(a.failed), "n"), (num(a.psnr), "n"),
                     (num(a.baseline_psnr), "n"), (num(a.margin, 2, sign=True), "n"), (num(a.ssim), "n"),
                     (num(a.baseline_ssim), "n"), (num(a.lpips), "n"),
                     (num(a.label_acc, 3, pct=True) if a.label_acc is not None else DASH, "n"),
                     (f"{a.leaked} of {scored}" if scored and a.success_rate is not None else DASH, "n"),
                     (f"{a.recovered} of {a.images}" if scored and a.images else DASH, "n"),  # labels only: none
                     (num(a.seconds, 1), "n")])
    head = ["attack", "jobs", "failed/error", "PSNR (dB)", "blank-guess PSNR (dB)", "margin (dB)", "SSIM",
            "blank-guess SSIM", "LPIPS (lower: closer)", "label accuracy", "updates leaked", "images recovered",
            "time per job (s)"]
    note = ("<p class='note'>Means over the updates each attack scored. <i>Blank guess</i>: the best constant grey "
            "image on the same private images, averaged the same way; <i>margin</i> = PSNR &minus; blank-guess "
            "PSNR.")
    if summary.lpips_note:
        note += f" LPIPS not computed: {esc(summary.lpips_note)}."
    return table(head, rows) + note + "</p>"


def updates_table(results: list[JobResult], header: RunHeader, images: list[ImageRow]) -> str:
    held: dict[tuple, int] = defaultdict(int)
    for i in held_back(images, header):
        held[(i.round, i.client, i.attack, i.adaptive)] += 1

    def key(r: JobResult):
        return (r.round, isinstance(r.client, str), r.client if isinstance(r.client, int) else 0, str(r.client),
                r.label)

    rows = []
    for r in sorted(results, key=key):
        s = r.score
        words, cls = verdict(r, header.success_margin, held[(r.round, r.client, r.attack, r.adaptive)])
        if r.status != "ok" and r.error:
            target = f"errors/{r.row_id}.txt" if r.traceback else ""
            err = esc(r.error)
            words_html = f"<span class='muted'>{esc(words)}</span>: " + (
                f"<a href='{link(target)}'>{err}</a>" if target else err)
        else:
            words_html = f"<span class='{cls}'>{esc(words)}</span>"
        rows.append([(str(r.round), "n"), (esc(who(r.client)), "w"), (esc(r.label), "w"), (words_html, "t"),
                     (num(s.psnr), "n"), (num(s.baseline_psnr), "n"), (num(s.margin, 2, sign=True), "n"),
                     (num(s.ssim), "n"), (num(s.baseline_ssim), "n"), (num(s.lpips), "n"),
                     (num(s.label_acc, 3, pct=True), "n"),
                     (DASH if math.isnan(s.psnr) else f"{s.recovered} of {s.num_images}", "n"),
                     (num(r.seconds, 1), "n")])
    head = ["round", "client", "attack", "verdict", "PSNR (dB)", "blank-guess PSNR (dB)", "margin (dB)", "SSIM",
            "blank-guess SSIM", "LPIPS", "labels recovered", "images recovered", "time (s)"]
    legend = ("<p class='note'>&#9675;: images that reached the SSIM rule in an update where the attack as a whole "
              "stayed within the blank-guess margin; they are not counted as recovered, and the galleries mark "
              "them.</p>"
              if any(held.values()) else "")
    return table(head, rows) + legend


def _cell(src: str, geometry: tuple[int, int, int], k: int, text: str, recovered: bool, held: bool) -> str:
    pitch, width, height = geometry
    x = PAD + k * pitch
    mark = (" <span class='ok' title='recovered'>&#10003;</span>" if recovered else
            " <span class='held' title='meets the SSIM rule; its row is within the blank-guess margin'>&#9675;</span>"
            if held else "")
    return (f"<div class='cell'><div class='px' style=\"width:{width}px;height:{height - 2 * PAD}px;"
            f"background-image:url('{src}');background-position:-{x}px -{PAD}px\"></div>{text}{mark}</div>")


def gallery(run_dir: Path, r: JobResult, images: list[ImageRow], header: RunHeader) -> str:
    path = run_dir / "images" / f"{r.row_id}.png"
    if not path.is_file():
        return ""
    caption = f"round {r.round} &middot; {esc(who(r.client))} &middot; {esc(r.label)}"
    src = link(f"images/{r.row_id}.png")
    total = len(images) or r.score.num_images
    n = min(16, max(1, total))
    geometry = columns(path, n) if images else None
    if geometry is None:
        body = f"<img src='{src}' alt='{esc(r.row_id)}'>"
    else:
        cells = []
        held = {id(i) for i in held_back(images, header)}
        for im in sorted(images, key=lambda i: i.position)[:n]:
            text = f"<br>{num(im.psnr, 1)} dB<br>SSIM {num(im.ssim, 2)}"
            cells.append(_cell(src, geometry, im.position, text, im.recovered, id(im) in held))
        body = "<div class='cells'>" + "".join(cells) + "</div>"
    leaked = (f" &middot; <span class='leak'>leaked {r.score.recovered} of {r.score.num_images}</span>"
              if r.success else "")
    shown = f"; the first {n} of {total} images shown" if geometry is not None and total > n else ""
    rows = ("the reconstruction only (unscored: no private image to show beside it)" if r.unscored
            else f"top: private image; bottom: reconstruction{shown}")
    return (f"<div class='gallery'><div class='cap'>{caption}{leaked}</div>{body}"
            f"<div class='note'>{rows}</div></div>")


def galleries(run_dir: Path, results: list[JobResult], images: list[ImageRow], header: RunHeader) -> str:
    by_row: dict[tuple, list[ImageRow]] = defaultdict(list)
    for im in images:
        by_row[(im.round, im.client, im.attack, im.adaptive)].append(im)
    ok = [r for r in results if r.ok and (run_dir / "images" / f"{r.row_id}.png").is_file()]
    ok.sort(key=lambda r: (r.round, isinstance(r.client, str), r.client if isinstance(r.client, int) else 0, r.label))
    shown = ok
    note = ""
    if len(ok) > MAX_GALLERIES:
        leaks = [r for r in ok if r.success][:MAX_GALLERIES]
        rest = [r for r in ok if not r.success][:MAX_GALLERIES - len(leaks)]
        keep = {id(r) for r in leaks + rest}
        shown = [r for r in ok if id(r) in keep]
        note = (f"<p class='note'>{len(shown)} of {len(ok)} galleries shown (leaks first); every one is in "
                "images/.</p>")
    body = "".join(gallery(run_dir, r, by_row.get((r.round, r.client, r.attack, r.adaptive), []), header)
                   for r in shown)
    return (note + body) if body else ("<p class='muted'>No galleries: nothing was scored, or the run saved no images "
                                       "(audit.save_images=false; AuditStrategy's save_images=False).</p>")


def best_samples(run_dir: Path, images: list[ImageRow], header: RunHeader) -> str:
    best = best_per_sample(images)
    held = {id(i) for i in held_back(list(best.values()), header)}
    chosen = sorted(best.values(), key=lambda r: (not r.recovered, -r.ssim, r.index))[:MAX_SAMPLES]
    cells = []
    for r in chosen:
        path = run_dir / "images" / "best" / f"{r.index}.png"
        if not path.is_file():
            continue
        mark = (" <span class='ok'>&#10003; recovered</span>" if r.recovered else
                " <span class='held' title='meets the SSIM rule; its row is within the blank-guess margin'>&#9675; not "
                "counted</span>" if id(r) in held else "")
        cells.append(f"<div class='gallery'><img src='{link(f'images/best/{r.index}.png')}' alt='sample {r.index}'>"
                     f"<div class='note'>sample {r.index} &middot; {esc(who(r.owner))}<br>round {r.round} &middot; "
                     f"{esc(r.label)}<br>{num(r.psnr, 1)} dB &middot; SSIM {num(r.ssim, 2)}{mark}</div></div>")
    if not cells:
        return ""
    return ("<h2>Each sample's best reconstruction</h2><p class='note'>Over every round and attack, the best "
            "reconstruction the server holds of each private sample (recovered first, then by SSIM; top: the "
            f"sample, bottom: the reconstruction). {len(chosen)} of {len(best)} scored samples shown.</p>"
            + "".join(cells))


def render(run_dir: str | Path, *, results: list[JobResult], rounds: list[RoundResult], images: list[ImageRow],
           summary: Summary) -> Path:
    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(exist_ok=True)
    shown = []
    if plots.exposure(run_dir / "plots" / "exposure.png", summary.exposure):
        shown.append(("exposure", "plots/exposure.png"))
    if plots.leakage(run_dir / "plots" / "leakage.png", results, success_ssim=summary.header.success_ssim):
        shown.append(("leakage", "plots/leakage.png"))
    if plots.training(run_dir / "plots" / "training.png", rounds):
        shown.append(("training", "plots/training.png"))
    img = {name: f"<p><img class='plot' src='{link(p)}' alt='{esc(name)} plot'></p>" for name, p in shown}
    unscored = sorted({r.unscored for r in results if r.unscored})
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>fedattack report: what leaked?</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>What leaked?</h1>",
        headline(summary, results, images),
        "".join(f"<p class='note'><b>Scores unavailable</b> for "
                f"{counted(sum(r.unscored == u for r in results), 'job')}: "
                f"{esc(u)}. Their reconstructions are in reconstructions/ and images/.</p>" for u in unscored),
        "<h2>Clients &times; rounds</h2>",
        matrix(results, summary.header.configured_rounds),
        "<h2>Exposure over rounds</h2>",
        img.get("exposure", ""),
        exposure_table(summary),
        calibration_section(run_dir),
        "<h2>Per attack</h2>",
        attack_table(summary),
        img.get("leakage", ""),
        "<h2>Training</h2>",
        img.get("training", "<p class='muted'>No round finished.</p>"),
        "<h2>Every audited update</h2>",
        "<p class='note'>Sorted by round, client and attack.</p>",
        updates_table(results, summary.header, images) if results else "<p class='muted'>No attack results.</p>",
        best_samples(run_dir, images, summary.header),
        "<h2>Galleries</h2>",
        "<p class='note'>Per audited update and attack: "
        + ("the private images of every client in the round's sum (top)" if sums_only(summary)
           else "the client's private images (top)") + " above their matched "
        "reconstructions (bottom), each with its PSNR and SSIM; &#10003; marks a recovered image, &#9675; an image "
        "that reached the SSIM rule in an update whose attack stayed within the blank-guess margin (not counted).</p>",
        galleries(run_dir, results, images, summary.header),
        "</body></html>",
    ]
    path = run_dir / "report.html"
    path.write_text("\n".join(parts))
    return path
