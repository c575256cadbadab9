"""The run directory and report.html a reader sees: headline, exposure, tables, galleries,
escaping, interrupted runs; the console as plain text; a screenshot where Chromium exists."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from html import unescape
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from rich.console import Console

from fedattack import config as fconfig
from fedattack.metrics import score
from fedattack.report.console import Progress, library_logs
from fedattack.report.exposure import ALL
from fedattack.report.screenshot import find_browser, screenshot
from fedattack.report.store import RunStore, load_run
from fedattack.results import Interruption, JobResult, RoundResult, Score
from fedattack.threat import DataSpec, Reconstruction, Truth
from fedattack.train_generator import TrainingProgress

SPEC = DataSpec(shape=(1, 32, 32), num_classes=2, mean=(0.5,), std=(0.25,))
PARTITIONS = {0: [10, 11, 12, 13, 14, 15], 1: [20, 21, 22, 23], 2: [30, 31]}


def _faces(indices: list[int]) -> torch.Tensor:
    from skimage.data import lfw_subset

    x = torch.as_tensor(lfw_subset()[indices], dtype=torch.float32)[:, None]
    return torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)


def _result(rnd: int, client: int, attack: str, indices: list[int], quality: str) -> JobResult:
    """A scored job: `quality` leak (close reconstructions), flat (the blank guess), failed."""
    px = _faces([i % 100 for i in indices])
    truth = Truth(images=SPEC.normalize(px), labels=torch.ones(len(indices), dtype=torch.long), indices=tuple(indices))
    if quality == "failed":
        return JobResult(round=rnd, client=client, attack=attack, defense="none", status="failed", seconds=1.0,
                         score=Score(num_images=len(indices)), error="AttackFailure: nothing [/x] leaked",
                         traceback="Traceback ...\nAttackFailure: nothing [/x] leaked")
    if quality == "leak":
        rec = (px + 0.03 * torch.randn(px.shape, generator=torch.Generator().manual_seed(rnd))).clamp(0, 1)
    else:
        rec = px.mean(dim=(1, 2, 3), keepdim=True).expand_as(px)
    s = score(Reconstruction(images=SPEC.normalize(rec), labels=truth.labels), truth, SPEC)
    return JobResult(round=rnd, client=client, attack=attack, defense="none", status="ok", seconds=2.5, score=s,
                     truth_pixels=px.numpy(), recon_pixels=rec.numpy())


def _run(tmp_path, *, rounds=2, configured=2, attack_names=("idlg", "invgrad")):
    cfg = fconfig.load(None, [f"fl.rounds={configured}", "audit.attacks=[idlg,invgrad]"])
    store = RunStore(tmp_path / "run", cfg=cfg, partitions=PARTITIONS)
    plan = {(1, 0): ([10, 11], "leak", "flat"), (1, 1): ([20, 21], "flat", "flat"),
            (2, 0): ([11, 12], "flat", "leak"), (2, 2): ([30, 31], "failed", "flat")}
    for (rnd, client), (idx, q0, q1) in plan.items():
        if rnd > rounds:
            continue
        store.add_result(_result(rnd, client, attack_names[0], idx, q0))
        store.add_result(_result(rnd, client, attack_names[1], idx, q1))
    for rnd in range(1, rounds + 1):
        store.add_round(RoundResult(round=rnd, train_loss=0.6 - 0.1 * rnd, test_loss=0.5, test_acc=0.7 + 0.05 * rnd,
                                    replies=2, audited_clients=2, jobs=4, seconds=3.0))
    return store


class Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
            self.tables[-1].append(self._row)
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _table(page: Page, first_header: str) -> list[list[str]]:
    return next(t for t in page.tables if t and t[0] and t[0][0] == first_header)


def test_the_report_answers_what_leaked_at_the_top(tmp_path):
    summary = _run(tmp_path).finish()
    run_dir = tmp_path / "run"
    text = (run_dir / "report.html").read_text()
    page = Page(text)
    h = summary.headline
    # two of the four audited updates leaked (round 1 client 0 by idlg, round 2 client 0 by invgrad)
    assert (h.audited_updates, h.leaked_updates, h.strongest_attack, h.worst_client) == (4, 2, "idlg", 0)
    assert (h.samples, h.exposed_samples) == (12, 3)  # samples 10, 11 (round 1) and 12 (round 2) of client 0
    head = text[:text.index("Clients &times; rounds")]
    assert "2 of 4</span> audited client updates leaked" in head and "3 of 12</b> training samples" in head
    assert "25.0%" in head and "Worst-exposed client: <b>client 0</b>" in head
    assert "Defense in force: <b>none</b>" in head and "honest-but-curious" in head
    assert "SSIM &ge; 0.50" in head and "more than 0.5 dB" in head and "interrupted" not in head
    # the headline's share is exposure.csv's last "all" row
    rows = list(csv.DictReader((run_dir / "exposure.csv").open()))
    last = [r for r in rows if r["client"] == ALL][-1]
    assert (int(last["round"]), int(last["recovered"]), int(last["samples"])) == (2, 3, 12)
    assert float(last["share"]) == pytest.approx(h.exposed_share) == 0.25
    per_client = {(r["round"], r["client"]): r for r in rows}
    assert per_client[("1", "0")]["recovered"] == "2" and per_client[("2", "0")]["recovered"] == "3"
    assert per_client[("2", "1")]["audited"] == "2" and per_client[("2", "1")]["recovered"] == "0"
    # the matrix: clients x rounds, a dot where the update leaked
    matrix = _table(page, "client \\ round")
    assert matrix[0] == ["client \\ round", "1", "2"] and [r[0] for r in matrix[1:]] == ["client 0", "client 1",
                                                                                         "client 2"]
    assert "●" in matrix[1][1] and "●" in matrix[1][2] and matrix[2][2] == "–"
    # every audited update, sorted by round and client, named columns, two decimals, no None
    updates = _table(page, "round")
    assert updates[0][:4] == ["round", "client", "attack", "verdict"] and "PSNR (dB)" in updates[0]
    keys = [(int(r[0]), r[1], r[2]) for r in updates[1:]]
    assert keys == sorted(keys) and len(keys) == 8
    flat = next(r for r in updates[1:] if r[:3] == ["1", "client 1", "idlg"])
    assert flat[3] == "no leakage beyond a blank guess"
    cells = [c for t in page.tables for r in t for c in r]
    assert not any(c in ("None", "nan", "['client']") or "None" in c for c in cells)
    numbers = [c for c in cells if re.fullmatch(r"[+-]?\d+\.\d+", c)]
    assert numbers and all(len(c.split(".")[1]) <= 2 for c in numbers)
    failed = next(r for r in updates[1:] if r[:3] == ["2", "client 2", "idlg"])
    assert failed[3] == "failed: AttackFailure: nothing [/x] leaked"
    # plots with their files; galleries captioned in words, each image with its scores
    for p in ("plots/exposure.png", "plots/leakage.png", "plots/training.png"):
        assert (run_dir / p).is_file() and f"src='{p}'" in text
    assert "round 1 &middot; client 0 &middot; idlg" in text and "r001_c0_idlg" not in re.sub(r"images/[^']*", "", text)
    assert text.count("class='cell'") == 14 and "SSIM 0.9" in text  # 7 scored jobs of 2 images
    assert len(list((run_dir / "images" / "best").glob("*.png"))) == 7  # every scored sample's best: 10-12, 20, 21, 30, 31


def _finish(store: RunStore, width: int = 300) -> tuple[str, str]:
    """Finish the run: (report.html, the console's summary table)."""
    summary = store.finish()
    out = io.StringIO()
    Progress(console=Console(file=out, width=width)).summary_table(summary)
    return (store.dir / "report.html").read_text(), out.getvalue()


@pytest.mark.parametrize("leaks,calibrated", [(False, False), (True, False), (False, True)])
def test_a_run_where_nothing_leaked_names_the_attack_budgets_it_rests_on(tmp_path, leaks, calibrated):
    cfg = fconfig.load(None, ["fl.rounds=1", "audit.attacks=[idlg,invgrad]", "invgrad.iterations=250",
                              f"audit.calibrate={str(calibrated).lower()}"])
    store = RunStore(tmp_path / "run", cfg=cfg, partitions=PARTITIONS)
    store.add_result(_result(1, 0, "idlg", [10, 11], "flat"))
    store.add_result(_result(1, 0, "invgrad", [10, 11], "leak" if leaks else "flat"))
    store.add_round(RoundResult(round=1, replies=2, audited_clients=1, jobs=2))
    head, console = _finish(store, width=200)
    head = head[:head.index("Clients &times; rounds")]
    budgets = "configured budgets (idlg 300 iterations (L-BFGS, one evaluation each), invgrad 250 iterations)"
    assert (budgets in head) == (budgets in console) == (not leaks), (head, console)
    chosen = "or at the counts calibration chose"  # calibration may have raised the configured budgets
    assert (chosen in head) == (chosen in console) == calibrated


@pytest.mark.parametrize("model,attack", [("convnet", "invgrad"), ("lenet", "invgrad"), ("convnet", "analytic")])
def test_a_model_that_trains_batch_norm_is_reported_as_a_lower_bound(tmp_path, model, attack):
    cfg = fconfig.load(None, ["fl.rounds=1", f"audit.attacks=[{attack}]", f"model.name={model}", "model.activation=relu"])
    store = RunStore(tmp_path / "run", cfg=cfg, partitions=PARTITIONS)
    store.add_result(_result(1, 0, attack, [10, 11], "leak"))
    store.add_round(RoundResult(round=1, replies=2, audited_clients=1, jobs=1))
    html, console = _finish(store, width=400)
    caveat = "read these scores as a lower bound"
    batch_norm = model == "convnet"
    # the caveat is about optimization attacks: an analytic attack alone has nothing coarse to excuse
    assert (caveat in html) == (caveat in console) == (batch_norm and attack == "invgrad"), console
    assert load_run(tmp_path / "run").header.batch_norm == batch_norm  # kept in summary.json


def test_rows_and_images_read_back_equal_what_was_written(tmp_path):
    store = _run(tmp_path)
    summary = store.finish()
    run = load_run(tmp_path / "run")
    assert run.images == store.images and run.sizes == {0: 6, 1: 4, 2: 2}
    assert run.summary() == summary and summary.interrupted is None
    leak = next(r for r in run.results if r.success)
    assert leak.score.margin > 0.5 and leak.score.baseline_psnr < leak.score.psnr
    images = list(csv.DictReader((tmp_path / "run" / "images.csv").open()))
    assert len(images) == 14 and {r["owner"] for r in images} == {"0", "1", "2"}
    assert sum(r["recovered"] == "True" for r in images) == sum(r.score.recovered for r in run.results)


def test_every_leakage_row_has_a_baseline_and_none_within_the_margin_is_a_success(tmp_path):
    _run(tmp_path).finish()
    rows = list(csv.DictReader((tmp_path / "run" / "leakage.csv").open()))
    scored = [r for r in rows if r["status"] == "ok"]
    assert scored and all(r["baseline_psnr"] and r["baseline_ssim"] and r["margin"] for r in scored)
    assert all(float(r["margin"]) > 0.5 for r in scored if r["success"] == "True")


def test_an_interrupted_run_says_so_and_keeps_its_files_consistent(tmp_path):
    store = _run(tmp_path, rounds=1, configured=5)
    summary = store.finish()  # 1 of 5 rounds recorded
    assert summary.interrupted.reason == "1 of 5 rounds recorded"
    text = (tmp_path / "run" / "report.html").read_text()
    assert "This run was interrupted</b> (1 of 5 rounds recorded) after 1 of 5 rounds" in text
    assert "Defense in force: <b>none</b>" in text and "None" not in text
    rows = list(csv.DictReader((tmp_path / "run" / "exposure.csv").open()))
    assert {r["round"] for r in rows} == {"1"}
    assert load_run(tmp_path / "run").interrupted
    # an exception on its way out of the caller marks it too (finish called from a `finally`)
    store2 = _run(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        try:
            raise KeyboardInterrupt
        finally:
            assert store2.finish().interrupted.reason == "KeyboardInterrupt"
    # a directory without summary.json never finished
    (tmp_path / "b" / "run" / "summary.json").unlink()
    assert load_run(tmp_path / "b" / "run").interrupted.reason == "the run did not finish (no summary.json)"
    # an explicit reason, as a signal handler gives it
    store3 = _run(tmp_path / "c")
    store3.mark_interrupted(Interruption(reason="SIGTERM", signal="SIGTERM", abandoned_jobs=3))
    assert store3.finish().interrupted.abandoned_jobs == 3
    assert "3 attack jobs still running then have no result" in (tmp_path / "c" / "run" / "report.html").read_text()


def test_names_of_files_attacks_and_errors_never_become_markup(tmp_path):
    evil = "x' onerror='alert(1)' a='"
    store = _run(tmp_path, attack_names=("idlg", "mod:<script>alert(2)</script>\"'<b>"))
    (store.dir / "images" / f"{evil}.png").write_bytes((store.dir / "images" / "r001_c0_idlg.png").read_bytes())
    store.finish()
    page = Page((tmp_path / "run" / "report.html").read_text())
    assert "script" not in page.tags
    assert all(not k.startswith("on") for k, _ in page.attrs)
    assert all(evil not in (v or "") for _, v in page.attrs)


def test_console_text_is_plain_and_a_status_line_reports_outstanding_jobs():
    out = io.StringIO()
    progress = Progress(console=Console(file=out, width=200), status_every=0)
    progress.print("--out o[/x]")  # rich markup would raise MarkupError here
    progress.calibration("calibrating invgrad: setting 1 of 4: 17.2 dB", 30)  # WARNING as well as INFO
    failed = JobResult(round=1, client=0, attack="a[/x]", defense="none", status="failed", seconds=1.0,
                       error="ValueError: closing tag '[/x]' has nothing to close")
    progress.result(failed)
    progress.round_done(RoundResult(round=1, replies=2), done=1, submitted=5)
    progress.concurrency = 2
    assert "setting 1 of 4: 17.2 dB" in out.getvalue()
    assert "o[/x]" in out.getvalue() and "closing tag '[/x]'" in out.getvalue() and "a[/x]" in out.getvalue()
    assert progress.status_line() == ("audit: 1/5 attack jobs done, 2 running, 2 queued; about 2 s left "
                                      "(1 s per job, 2 at a time)")
    progress.result(JobResult(round=1, client=0, attack="b", defense="none", status="ok", seconds=1.0))
    progress.done = 5
    assert progress.status_line() is None


def test_the_estimate_waits_for_every_attack_and_weighs_each_once():
    progress = Progress(console=Console(file=io.StringIO(), width=200), status_every=0)
    progress.attacks = ["analytic", "invgrad"]
    progress.concurrency = 2
    progress.round_done(RoundResult(round=1, replies=2), done=0, submitted=10)
    for _ in range(3):  # the cheap attack finishes first: its 0 s say nothing of invgrad's
        progress.result(JobResult(round=1, client=0, attack="analytic", defense="none", status="ok", seconds=0.0))
    assert progress.status_line().endswith("; no estimate until invgrad finishes a job")
    progress.result(JobResult(round=1, client=0, attack="invgrad", defense="none", status="ok", seconds=40.0))
    assert progress.status_line().endswith("; about 60 s left (20 s per job, 2 at a time)")


def test_a_result_line_leaves_out_labels_no_attack_recovered():
    out = io.StringIO()
    progress = Progress(console=Console(file=out, width=300), status_every=0)
    for acc in (float("nan"), 0.75):
        progress.result(JobResult(round=1, client="aggregate", attack="cpa", defense="secagg", status="ok",
                                  seconds=1.0, score=Score(psnr=12.0, ssim=0.1, label_acc=acc, num_images=4,
                                                           baseline_psnr=13.0)))
    first, second = out.getvalue().splitlines()
    assert "labels" not in first and "SSIM 0.10 · 0/4 recovered" in first
    assert "labels 75% · 0/4 recovered" in second


def test_the_summary_names_why_jobs_failed_also_when_quiet():
    out = io.StringIO()
    progress = Progress(console=Console(file=out, width=300), quiet=True, status_every=0)
    for k in range(2):
        progress.result(JobResult(round=1, client=k, attack="rgap", defense="none", status="failed", seconds=0.1,
                                  error=f"AttackFailure: reason {k}"))
    progress.result(JobResult(round=1, client=0, attack="idlg", defense="none", status="ok", seconds=1.0))
    assert out.getvalue() == ""  # quiet: no live lines
    from fedattack.report.summary import Summary
    from fedattack.results import RunHeader

    progress.summary_table(Summary(header=RunHeader(), attacks={}, rounds=1, final_test_acc=None, client_errors=0,
                                   defense=None, epsilon=None))
    assert "rgap: 2 jobs without a reconstruction (the first: AttackFailure: reason 0)" in out.getvalue()
    assert "idlg:" not in out.getvalue()


def test_a_run_whose_every_job_failed_says_no_update_was_scored_not_0_of_0():
    from fedattack.report.summary import Headline, Summary
    from fedattack.results import RunHeader

    out = io.StringIO()
    headline = Headline(audited_updates=0, leaked_updates=0, samples=4, audited_samples=0, exposed_samples=0,
                        exposed_share=0.0, strongest_attack=None, worst_client=None)
    Progress(console=Console(file=out, width=300), quiet=True, status_every=0).summary_table(
        Summary(header=RunHeader(), attacks={}, rounds=1, final_test_acc=None, client_errors=0, defense=None,
                epsilon=None, headline=headline))
    assert "no update was scored (no attack produced images); 0 of 4 training samples recovered" in out.getvalue()
    assert "0 of 0" not in out.getvalue()


def test_flower_and_ray_warnings_stay_hidden_unless_verbose():
    import warnings

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("flwr")
    handler = Keep()
    logger.addHandler(handler)
    try:
        with library_logs(verbose=False):
            logger.warning("fraction_evaluate is set to 0.0. Federated evaluation will be skipped.")
            with warnings.catch_warnings(record=True) as caught:  # keeps the filters library_logs set
                warnings.warn_explicit("Tip: set RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0", FutureWarning, "worker.py", 1,
                                       module="ray._private.worker")
        with library_logs(verbose=True):
            logger.warning("shown when verbose")
    finally:
        logger.removeHandler(handler)
    assert seen == ["shown when verbose"] and caught == []


def test_train_generator_progress_lines_carry_an_estimate(capsys):
    with TrainingProgress(100, terminal=False) as bar:
        bar.log("epoch 10/100: D loss 1.0, G loss 1.0, 2.0 s")
    out = capsys.readouterr().out
    assert out.startswith("epoch 10/100: D loss 1.0, G loss 1.0, 2.0 s; about ") and "s left" in out


@pytest.mark.skipif(find_browser() is None, reason="no Chromium or Chrome on the PATH")
def test_a_screenshot_of_the_report_shows_a_page(tmp_path):
    from PIL import Image

    _run(tmp_path).finish()
    png = screenshot(tmp_path / "run" / "report.html", tmp_path / "report.png", width=1000, height=1400)
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert pixels.shape == (1400, 1000)
    assert pixels.std() > 10 and (pixels < 100).mean() > 0.005  # text and plots, not a blank page
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["headline"]["leaked_updates"] == 2


def test_an_apps_run_without_dataset_indices_has_no_exposure_and_says_why():
    from fedattack.report.html import exposure_table
    from fedattack.report.summary import summarize
    from fedattack.results import ImageRow, RunHeader

    result = JobResult(round=1, client=0, attack="idlg", defense="none", status="ok", seconds=1.0,
                       score=Score(psnr=30.0, ssim=0.9, recovered=2, num_images=2, baseline_psnr=15.0,
                                   baseline_ssim=0.2))
    images = [ImageRow(round=1, client=0, attack="idlg", adaptive=False, position=p, index=-1, owner="", psnr=30.0,
                       ssim=0.9, baseline_psnr=15.0, baseline_ssim=0.2, lpips=float("nan"), recovered=True)
              for p in range(2)]
    summary = summarize([result], [RoundResult(round=1)], RunHeader(), images=images, sizes={})
    assert summary.exposure == [] and summary.headline.samples == 0 and summary.headline.leaked_updates == 1
    assert "Exposure per training sample is not shown" in exposure_table(summary)
    indexed = [ImageRow(**{**vars(r), "index": 10 + r.position, "owner": 0}) for r in images]
    summary = summarize([result], [RoundResult(round=1)], RunHeader(), images=indexed, sizes={0: 5})
    assert summary.headline.exposed_samples == 2 and summary.headline.samples == 5


def test_a_secagg_run_without_aggregate_attacks_says_why_no_update_was_attacked():
    from fedattack.report.html import headline
    from fedattack.report.summary import summarize
    from fedattack.results import RunHeader

    header = RunHeader(defense="secagg(num_shares=3,reconstruction_threshold=2)", defenses=("secagg",),
                       configured_attacks=("idlg", "invgrad"))
    summary = summarize([], [RoundResult(round=1)], header)
    text = unescape(headline(summary, [], []))
    assert "Under SecAgg+ the server sees each round's sum of updates" in text
    # which configured attacks did not run, why, and what would attack the sum
    assert "idlg, invgrad do not run (each needs one client's update)" in text
    assert re.search(r"no configured attack runs on the sum \(add [^)]*\bcpa\b[^)]* to audit\.attacks; "
                     r"cpa needs a fully connected layer on the flattened input, as the built-in mlp has\)", text)
    # the defense is found by what it does, not by its name's letters
    lookalike = RunHeader(defense="nosecagg(sigma=0.1)", defenses=("nosecagg",))
    assert "No client update was audited" in headline(summarize([], [RoundResult(round=1)], lookalike), [], [])
    # a user's app under SecAgg+ records what its server saw, not a defense
    app = unescape(headline(summarize([], [RoundResult(round=1)], RunHeader(configured_attacks=("idlg",), sums=True)),
                            [], []))
    assert "No sum of updates was scored" in app
    assert re.search(r"\(add [^)]*\bcpa\b[^)]* to attacks; cpa needs [^)]*\)", app)
    assert "and no configured attack runs on a sum." in app
    failed = unescape(headline(summarize([], [RoundResult(round=1)], RunHeader(configured_attacks=("cpa",), sums=True)),
                               [], []))
    assert "No sum of updates was scored (no attack on the sum produced images)." in failed
    plain = summarize([], [RoundResult(round=1)], RunHeader())
    assert "No client update was audited" in headline(plain, [], [])


def test_a_secagg_run_that_attacked_the_sum_says_so_and_names_only_the_attacks_that_ran():
    from fedattack.report.html import headline
    from fedattack.report.summary import run_header, summarize
    from fedattack.results import ImageRow

    raw = fconfig.load(None, ["client.defenses=[secagg]", "audit.attacks=[cpa,invgrad]", "cpa.iterations=200",
                              "invgrad.iterations=50"]).to_dict()
    header = run_header(raw)
    assert header.budgets == ("cpa 200 iterations",)  # invgrad never ran: no budget to speak of
    assert run_header({**raw, "client": {**raw["client"], "defenses": []}}).budgets == (
        "cpa 200 iterations", "invgrad 50 iterations")
    # a user's app records no client.defenses; the audit records that its server saw sums
    app = {"server": {"mode": "honest"}, "audit": {"attacks": ["cpa", "invgrad"]}, "cpa": {"iterations": 200},
           "invgrad": {"iterations": 50}}
    assert run_header(app).budgets == ("cpa 200 iterations", "invgrad 50 iterations")
    assert run_header({**app, "server": {"mode": "honest", "sees": "sums"}}).budgets == ("cpa 200 iterations",)
    assert run_header(app).defense == "none"
    app["protocol"] = {"defenses": [{"name": "gaussian", "sigma": 0.01}]}
    assert run_header(app).defense == "gaussian(sigma=0.01)"
    assert run_header({**app, "server": {"mode": "honest", "sees": "sums"}}).defense == "gaussian(sigma=0.01)+SecAgg+"
    results = [JobResult(round=rnd, client="aggregate", attack="cpa", defense="secagg", status="ok", seconds=1.0,
                         scope="aggregate", score=Score(psnr=12.0, ssim=0.1, num_images=2, baseline_psnr=20.0,
                                                        baseline_ssim=0.4)) for rnd in (1, 2)]
    images = [ImageRow(round=1, client="aggregate", attack="cpa", adaptive=False, position=p, index=10 + p, owner=p,
                       psnr=12.0, ssim=0.1, baseline_psnr=20.0, baseline_ssim=0.4, lpips=float("nan"),
                       recovered=False) for p in range(2)]
    summary = summarize(results, [RoundResult(round=1), RoundResult(round=2)], header, images=images,
                        sizes={0: 5, 1: 5})
    text = unescape(headline(summary, results, images))
    assert "audited aggregate updates (each round's sum under SecAgg+) leaked" in text
    assert "client updates" not in text
    assert "invgrad does not run (it needs one client's update); cpa attacks the sum" in text
    assert "(cpa 200 iterations)" in text and "invgrad 50" not in text
    assert "only observes each round's sum of the updates" in text
    out = io.StringIO()
    progress = Progress(console=Console(file=out, width=300), status_every=0)
    progress.header(fconfig.load(None, ["client.defenses=[secagg]", "audit.attacks=[cpa,invgrad]"]), "runs/x")
    progress.summary_table(summary)
    assert "auditing with cpa; run directory" in out.getvalue()
    assert "0 of 2 audited aggregate updates (SecAgg+ sums) leaked" in out.getvalue()
    assert "invgrad" not in out.getvalue()


@pytest.mark.parametrize("chosen, says", [(500, "250 iterations), except where calibration raised them: invgrad to "
                                                "500 iterations (calibration.json)"),
                                          ((500, 2), "calibration raised them: invgrad to 500 iterations and 2 "
                                                     "restarts (calibration.json)"),
                                          ((250, 4), "calibration raised them: invgrad to 4 restarts "
                                                     "(calibration.json)"),
                                          (250, None)])
def test_the_budgets_name_what_calibration_raised(tmp_path, chosen, says):
    cfg = fconfig.load(None, ["fl.rounds=1", "audit.attacks=[idlg,invgrad]", "invgrad.iterations=250",
                              "audit.calibrate=true"])
    store = RunStore(tmp_path / "run", cfg=cfg, partitions=PARTITIONS)
    (tmp_path / "run" / "calibration.json").write_text(json.dumps([
        {"attack": "invgrad", "params": {"iterations": chosen} if isinstance(chosen, int) else
         {"iterations": chosen[0], "restarts": chosen[1]}},
        {"attack": "invgrad", "skipped": "ValueError: too few images", "params": {"iterations": 9000}}]))
    store.add_result(_result(1, 0, "idlg", [10, 11], "flat"))
    store.add_result(_result(1, 0, "invgrad", [10, 11], "flat"))
    store.add_round(RoundResult(round=1, replies=2, audited_clients=1, jobs=2))
    for text in _finish(store):
        assert "configured budgets (idlg 300 iterations (L-BFGS, one evaluation each), invgrad 250 iterations)" in text
        assert "or at the counts calibration chose" not in text  # calibration.json says what it chose
        assert (says in text) if says else "calibration raised" not in text


def test_a_result_line_says_what_the_report_says_of_a_score_above_the_blank_guess():
    from fedattack.report.html import verdict

    out = io.StringIO()
    progress = Progress(console=Console(file=out, width=300), status_every=0)
    rows = [JobResult(round=1, client=0, attack="cpl", defense="none", status="ok", seconds=1.0,
                      score=Score(psnr=psnr, ssim=0.39, num_images=1, baseline_psnr=12.3, baseline_ssim=0.2))
            for psnr in (20.7, 12.5)]
    for r in rows:
        progress.result(r)
    above, near = out.getvalue().splitlines()
    assert above.endswith("above the blank guess, no image recovered · 1.0 s") and "safe" not in above
    assert "no leak beyond a blank guess" in near
    assert verdict(rows[0], 0.5)[0] == "above the blank guess, no image recovered"
    # labels without images: no PSNR to set beside a blank guess, as the report says
    labels = JobResult(round=1, client=0, attack="analytic", defense="none", status="ok", seconds=1.0,
                       score=Score(psnr=float("nan"), ssim=float("nan"), num_images=2, label_acc=0.5))
    progress.result(labels)
    assert out.getvalue().splitlines()[-1].endswith("analytic · labels 50% · labels only · 1.0 s")
    assert verdict(labels, 0.5)[0] == "labels only"
    from fedattack.report.html import updates_table
    from fedattack.results import RunHeader

    assert "labels only" in updates_table([labels], RunHeader(), []) and "0 of 2" not in updates_table(
        [labels], RunHeader(), [])  # no images to count as recovered or not


def test_the_held_back_legend_appears_only_beside_rows_that_have_held_back_images():
    from fedattack.report.html import updates_table
    from fedattack.results import ImageRow, RunHeader

    result = JobResult(round=1, client=0, attack="idlg", defense="none", status="ok", seconds=1.0,
                       score=Score(psnr=15.2, ssim=0.6, num_images=1, baseline_psnr=15.0, baseline_ssim=0.2))
    image = ImageRow(round=1, client=0, attack="idlg", adaptive=False, position=0, index=3, owner=0, psnr=15.2,
                     ssim=0.6, baseline_psnr=15.0, baseline_ssim=0.2, lpips=float("nan"), recovered=False)
    held = updates_table([result], RunHeader(), [image])  # SSIM rule met, margin not
    assert "images that reached the SSIM rule in an update" in held
    assert "within the blank-guess margin as a whole; 1 image meets the SSIM rule" in held
    assert "no leakage beyond a blank guess" not in held  # which would read false beside a sharp image
    plain = updates_table([result], RunHeader(), [])
    assert "images that reached the SSIM rule" not in plain and "no leakage beyond a blank guess" in plain


def test_each_samples_best_reconstruction_carries_the_held_back_mark(tmp_path):
    from dataclasses import replace as changed

    from fedattack.report.html import best_samples
    from fedattack.results import ImageRow, RunHeader

    (tmp_path / "images" / "best").mkdir(parents=True)
    sharp = ImageRow(round=1, client=0, attack="idlg", adaptive=False, position=0, index=3, owner=0, psnr=26.6,
                     ssim=0.96, baseline_psnr=13.9, baseline_ssim=0.2, lpips=float("nan"), recovered=False)
    rows = [sharp, changed(sharp, index=4, ssim=0.3), changed(sharp, index=5, recovered=True)]
    for r in rows:
        (tmp_path / "images" / "best" / f"{r.index}.png").write_bytes(b"")
    page = best_samples(tmp_path, rows, RunHeader())
    cells = page.split("<div class='gallery'>")[1:]
    marks = {int(c.split("'note'>sample ")[1].split(" ")[0]): ("recovered" in c, "not counted" in c) for c in cells}
    assert marks == {5: (True, False), 3: (False, True), 4: (False, False)}


def test_a_run_that_evaluated_nothing_says_so_and_draws_no_empty_accuracy_panel(tmp_path):
    from PIL import Image

    cfg = fconfig.load(None, ["fl.rounds=1", "audit.attacks=[idlg]"])
    store = RunStore(tmp_path / "run", cfg=cfg, partitions=PARTITIONS)
    store.add_result(_result(1, 0, "idlg", [10, 11], "flat"))
    store.add_round(RoundResult(round=1, replies=1, audited_clients=1, jobs=1, train_loss=0.7))  # test_acc: NaN
    html, _ = _finish(store)
    assert "Utility: not measured (no test split was evaluated)." in html and "test accuracy <b>" not in html
    width, _ = Image.open(tmp_path / "run" / "plots" / "training.png").size
    assert width <= 600  # the loss panel alone


def test_an_attack_that_failed_every_job_is_named_and_left_out_of_the_budgets(tmp_path):
    cfg = fconfig.load(None, ["fl.rounds=1", "audit.attacks=[idlg,invgrad]"])
    store = RunStore(tmp_path / "run", cfg=cfg, partitions=PARTITIONS)
    store.add_result(_result(1, 0, "idlg", [10, 11], "flat"))
    store.add_result(_result(1, 0, "invgrad", [10, 11], "failed"))
    store.add_round(RoundResult(round=1, replies=2, audited_clients=1, jobs=2))
    for text in _finish(store):
        # invgrad tried nothing at its budget
        assert "configured budgets (idlg 300 iterations (L-BFGS, one evaluation each))" in text
        assert "Every job of invgrad failed: it measures nothing in this run" in " ".join(text.split())


def test_a_matrix_cell_names_an_attack_that_leaked_where_one_did():
    from fedattack.report.html import matrix

    def res(attack, ssim, recovered):
        return JobResult(round=1, client=0, attack=attack, defense="none", status="ok", seconds=1.0,
                         score=Score(psnr=20.0, ssim=ssim, num_images=2, recovered=recovered, baseline_psnr=10.0,
                                     baseline_ssim=0.1))

    # idlg's mean SSIM is higher but it recovered nothing; analytic recovered one image
    cell = matrix([res("idlg", 0.49, 0), res("analytic", 0.40, 1)], 1)
    assert "0.40" in cell and "analytic" in cell and "idlg" not in cell and "&#9679;" in cell
    assert "idlg" in matrix([res("idlg", 0.49, 0), res("analytic", 0.40, 0)], 1)


def test_on_equal_scores_the_best_is_chosen_by_name_not_by_which_job_finished_first():
    """rtf and analytic both recover an image exactly (PSNR 100, SSIM 1): the matrix cell and the
    sample's best reconstruction named whichever job finished first."""
    from fedattack.report.exposure import best_per_sample
    from fedattack.report.html import matrix
    from fedattack.results import ImageRow

    def res(attack, adaptive=False):
        return JobResult(round=1, client=3, attack=attack, defense="none", status="ok", seconds=1.0, adaptive=adaptive,
                         score=Score(psnr=100.0, ssim=1.0, num_images=1, recovered=1, baseline_psnr=10.0,
                                     baseline_ssim=0.1))

    def row(attack, adaptive=False, rnd=1):
        return ImageRow(round=rnd, client=3, attack=attack, adaptive=adaptive, position=0, index=12, owner=3,
                        psnr=100.0, ssim=1.0, baseline_psnr=10.0, baseline_ssim=0.1, lpips=0.02, recovered=True)

    jobs = [res("rtf"), res("analytic"), res("analytic", adaptive=True)]
    cells = {matrix(order, 1) for order in (jobs, jobs[::-1], jobs[1:] + jobs[:1])}
    assert len(cells) == 1 and "analytic" in cells.pop()
    rows = [row("rtf"), row("analytic", adaptive=True), row("analytic"), row("analytic", rnd=2)]
    chosen = {best_per_sample(order)[12] for order in (rows, rows[::-1], rows[2:] + rows[:2])}
    assert chosen == {row("analytic")}


def test_the_calibration_table_names_every_protocol_setting_it_simulated(tmp_path):
    from fedattack.report.html import calibration_section

    protocol = {"lr": 0.1, "local_steps": 4, "local_epochs": 2, "batch_size": 2, "num_examples": 4, "momentum": 0.9,
                "optimizer": "sgd", "weight_decay": 0.0, "proximal_mu": 0.5}
    (tmp_path / "calibration.json").write_text(json.dumps([{"attack": "invgrad", "protocol": protocol,
                                                             "skipped": "nothing to tune"}]))
    page = calibration_section(tmp_path)
    assert "4 images, 4 steps in 2 epochs of batch 2 at lr 0.1, momentum 0.9, FedProx mu 0.5" in page
    assert "weight decay" not in page
    # a defense acting inside training is left out of the simulated updates, and the table says so
    (tmp_path / "calibration.json").write_text(json.dumps([{"attack": "invgrad", "protocol": protocol, "tuned": {},
                                                             "held_out": {}, "unmodelled_defenses": ["dpsgd"]}]))
    assert "the configured parameters; dpsgd left out of the simulated updates" in calibration_section(tmp_path)


def test_an_apps_log_line_leaves_out_labels_an_attack_did_not_recover(caplog):
    import logging
    from dataclasses import replace as dc_replace

    from fedattack.server.audit import log_result

    r = _result(1, 0, "cpa", [1, 2], "leak")
    caplog.set_level(logging.INFO, logger="flwr")
    log_result(dc_replace(r, score=dc_replace(r.score, label_acc=float("nan"))))
    log_result(r)
    first, second = (rec.getMessage() for rec in caplog.records if "fedattack: round 1" in rec.getMessage())
    assert "labels" not in first and "nan" not in first
    assert "labels 100%" in second


def test_a_recovered_share_axis_reads_as_per_cent():
    from fedattack.report.plots import percent_top

    assert percent_top(0.0) == 100.0 and percent_top(float("nan")) == 100.0  # nothing recovered: 0..100 %
    assert percent_top(0.5) == 1.0 and percent_top(20.0) == pytest.approx(22.0)


def test_console_numbers_that_round_to_zero_print_without_a_sign():
    from fedattack.report.console import _f

    assert [_f(-0.001, ".2f"), _f(-0.004, "+.2f"), _f(0.004, "+.2f"), _f(0.5, "+.2f"), _f(-1.234, ".2f")] == \
        ["0.00", "0.00", "0.00", "+0.50", "-1.23"]
    assert _f(None, ".2f") == _f(float("nan"), ".1f") == "-"


def test_notes_are_part_of_the_answer_and_print_when_quiet():
    # under SecAgg+ the note says which attacks never ran: without it a quiet run prints an empty table
    from rich.console import Console

    from fedattack.report.console import Progress

    out = io.StringIO()
    progress = Progress(console=Console(file=out, width=200), quiet=True)
    progress.print("live progress")
    progress.note("Under SecAgg+ the server sees each round's sum of updates, never one client's")
    assert out.getvalue() == "note: Under SecAgg+ the server sees each round's sum of updates, never one client's\n"


def test_a_run_without_an_audit_says_so_from_first_line_to_last(tmp_path):
    from fedattack import config as fconfig
    from fedattack.report.summary import Summary
    from fedattack.results import RunHeader

    out = io.StringIO()
    progress = Progress(console=Console(file=out, width=400), status_every=0)
    progress.header(fconfig.load(None, ["audit.every=0"]), tmp_path)
    progress.round_done(RoundResult(round=1, replies=2, train_loss=0.5, test_acc=0.8), 0, 0)
    summary = Summary(header=RunHeader(), attacks={}, rounds=5, final_test_acc=0.8, client_errors=0, defense="none",
                      epsilon=None)
    progress.summary_table(summary)
    text = out.getvalue()
    from fedattack.report.html import headline
    assert "No client update was audited (no attack job ran)." in headline(summary, [], [])
    off = RunHeader.from_config(fconfig.load(None, ["audit.every=0"]).to_dict())
    assert off.configured_attacks == () and RunHeader.from_config(fconfig.load(None).to_dict()).configured_attacks
    assert "audit off (audit.every=0)" in text and "auditing with" not in text
    assert "test acc 0.800  audit off  " in text and "jobs done" not in text  # not "audit 0/0 jobs done"
    assert "no update was audited (audit.every=0)" in text and "leaked" not in text  # nor an empty table
    out = io.StringIO()
    progress = Progress(console=Console(file=out, width=400), status_every=0)
    progress.header(fconfig.load(None, ["audit.attacks=[]"]), tmp_path)
    assert "audit off (audit.attacks=[])" in out.getvalue()


def test_status_lines_half_a_minute_apart_never_read_the_same():
    from fedattack.report.console import duration

    said = [duration(s) for s in range(90, 600, 30)]
    assert said[:3] == ["1 min 30 s", "2 min", "2 min 30 s"] and len(set(said)) == len(said)
    assert duration(-0.2) == "0 s"
    assert duration(45) == "45 s" and duration(1200) == "20 min" and duration(7200) == "2.0 h"


def test_a_summary_mean_does_not_depend_on_the_order_in_which_jobs_finished():
    """Two runs of one config finish their jobs in different orders; a floating-point sum in that
    order moved a mean across its rounding (baseline SSIM 0.301 against 0.3009)."""
    from fedattack.report.summary import _mean

    xs = [0.1, 0.2, 0.3, 0.30095, 1e-17]
    assert len({_mean(order, 17) for order in (xs, xs[::-1], xs[2:] + xs[:2])}) == 1
    assert _mean([0.1, 0.2, float("nan")]) == 0.15 and _mean([float("nan")]) is None
