"""`fedattack sweep`: any config key, validated before anything runs; breaking points, the
answer with its cost and uncertainty, the tables, plots and sweep.html."""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fedattack import config as fconfig
from fedattack.cli import main
from fedattack.errors import ConfigError
from fedattack.report import sweep as report
from fedattack.report.summary import AttackSummary, Summary
from fedattack.results import RunHeader
from fedattack.sweep import check_runs, plan


def _load(*overrides):
    return fconfig.load(None, ["audit.attacks=[idlg]", *overrides])


def test_plan_switches_the_defense_on_and_validates_each_value():
    key, runs, reference = plan(_load("sweep.defense=gaussian", "sweep.values=[0.001,0.1]"))
    swept = [c for r, c in runs if not r.reference]
    assert key == "gaussian.sigma" and [c.defense("gaussian").sigma for c in swept] == [0.001, 0.1]
    assert all(c.client.defenses == ["gaussian"] for c in swept)
    refs = [c for r, c in runs if r.reference]
    assert len(refs) == 1 and refs[0].client.defenses == [] and "without gaussian" in reference
    with pytest.raises(ConfigError, match="topk.keep"):
        plan(_load("sweep.defense=topk", "sweep.values=[0.5,7]"))
    with pytest.raises(ConfigError, match="sweep.param"):
        plan(_load("sweep.defense=gaussian", "sweep.param=nope", "sweep.values=[1]"))


def test_any_config_key_sweeps_with_the_same_seed_at_every_value():
    key, runs, reference = plan(_load("sweep.key=client.local_epochs", "sweep.values=[1,2,5]", "sweep.seeds=[3,4]",
                                      "client.local_steps=0"))
    assert key == "client.local_epochs"
    by_seed = {}
    for r, c in runs:
        by_seed.setdefault(r.seed, []).append((r.value, c.client.local_epochs, c.seed, r.reference))
    # 1 is the configured value: that run is the reference, no extra one
    assert by_seed == {s: [(1, 1, s, False), (2, 2, s, False), (5, 5, s, False)] for s in (3, 4)}
    assert "configured client.local_epochs=1" in reference
    assert [r.label for r, _ in runs][:3] == ["client.local_epochs=1 (as configured)", "client.local_epochs=2",
                                              "client.local_epochs=5"]
    # a key naming a defense's parameter switches the defense on, the reference runs without it
    _, runs, _ = plan(_load("sweep.key=gaussian.sigma", "sweep.values=[0.01]"))
    assert [(r.reference, c.client.defenses) for r, c in runs] == [(False, ["gaussian"]), (True, [])]
    # ... a plug-in's too, by its import path (dots in the module path included)
    path = "tests.plugins.defense:scale"
    key, runs, _ = plan(_load(f"sweep.key={path}.factor", "sweep.values=[0.25,1.0]"))
    assert key == f"{path}.factor"
    assert [(r.reference, c.client.defenses) for r, c in runs] == [(False, [path]), (False, [path]), (True, [])]
    assert [c.defense(path).factor for r, c in runs if not r.reference] == [0.25, 1.0]
    with pytest.raises(ConfigError, match=r"^sweep.values: value 2 for tests.plugins.defense:scale.factor: must be "):
        plan(_load(f"sweep.key={path}.factor", "sweep.values=[2]"))


def test_the_configured_value_of_a_swept_key_is_mapped_beside_the_swept_ones(tmp_path):
    from fedattack.sweep import mapped_values

    cfg = _load("sweep.key=client.batch_size", "sweep.values=[1,4]", "client.batch_size=2")
    _, runs, _ = plan(cfg)
    assert [(r.value, r.reference) for r, _ in runs] == [(1, False), (4, False), (2, True)]
    assert mapped_values(cfg, "client.batch_size") == [1, 2, 4]  # in its place among numbers in order
    assert mapped_values(_load("sweep.key=client.batch_size", "sweep.values=[4,1]", "client.batch_size=8"),
                         "client.batch_size") == [8, 4, 1]
    assert mapped_values(_load("sweep.defense=gaussian", "sweep.values=[0.1]"), "gaussian.sigma") == [0.1]
    table = report.rows(_runs({(1, 0): (0.9, {"idlg": 2}), (4, 0): (0.8, {"idlg": 0})}) + [
        report.SweepRun(value=2, seed=0, label="reference", run_dir=Path("x"), reference=True,
                        summary=_summary(0.85, {"idlg": 1}))], report.Answer(key="client.batch_size", values=[1, 4],
                                                                             seeds=[0], reference="r"))
    assert [(r["value"], r["reference"]) for r in table] == [("1", False), ("4", False), ("2", True)]
    points = report.per_value(table, [1, 2, 4])
    assert [p["value"] for p in points["idlg"]] == [1, 2, 4]  # the reference measured 2: it is on the map
    import io

    from rich.console import Console

    from fedattack.report.console import Progress
    from fedattack.sweep import print_table

    out = io.StringIO()
    print_table(table, "sweep", Progress(console=Console(file=out, width=200)), order=[1, 2, 4])
    printed = [line.split()[1] for line in out.getvalue().splitlines() if line.startswith("│")]
    assert printed == ["1", "reference", "4"]  # the console lists the reference in its place, as sweep.html does
    assert "breaking" not in out.getvalue()  # no attack has a breaking point in this answer
    out = io.StringIO()
    print_table([{**r, "breaking_point": "4"} for r in table], "sweep", Progress(console=Console(file=out, width=200)))
    lines = out.getvalue().splitlines()
    assert lines[-1] == ("breaking point (the first value from which on the attack recovers no image in any seed): "
                         "idlg 4")  # one value over all seeds: not a column beside each run's own numbers
    assert not any("breaking" in line for line in lines[:-1])


@pytest.mark.parametrize("overrides, message", [
    (["sweep.key=client.local_epoch", "sweep.values=[1]"],
     r"^sweep\.key: 'client\.local_epoch' is not a config key; keys of client: local_epochs, "),
    (["sweep.key=nosuch.thing", "sweep.values=[1]"], r"^sweep\.key: 'nosuch\.thing' is not a config key; sections: "),
    (["sweep.key=gaussian.nope", "sweep.values=[1]"], r"^sweep\.key: 'gaussian\.nope' is not a parameter of the defense"),
    (["sweep.key=client.local_epochs", "sweep.values=[1,two]", "client.local_steps=0"],
     r"^sweep\.values: value two for client\.local_epochs: expected an integer, got 'two'$"),
    (["sweep.key=client.batch_size", "sweep.values=[2,0]"], r"^sweep\.values: value 0 for client\.batch_size: "),
    (["sweep.key=client.lr", "sweep.values=[0.1]", "sweep.seeds=[0,x]"], r"^sweep\.seeds: must be an integer in "),
    (["sweep.key=client.lr", "sweep.values=[0.1]", "sweep.seeds=[0,-1]"], r"^sweep\.seeds: must be an integer in "),
    (["sweep.key=client.lr", "sweep.defense=gaussian", "sweep.values=[1]"], r"^sweep\.key: give sweep\.key or"),
    (["sweep.values=[1]"], r"^sweep\.key: name the config key to sweep"),
    (["sweep.key=client.batch_size", "sweep.values=[2,4,2]"], r"^sweep\.values: 2 is listed twice"),
    (["sweep.key=victim.indices", "sweep.values=[[1],[2]]"], r"^sweep\.key: 'victim\.indices' chooses the one update"),
    (["sweep.key=client.local_epochs", "sweep.values=[1,3]"],
     r"^sweep\.key: client\.local_epochs changes nothing in this config: it is read only with client\.local_steps=0"),
    (["sweep.key=model.init_scale", "sweep.values=[0.1,1]"], r"^sweep\.key: model\.init_scale changes nothing"),
    (["sweep.key=client.batch_size", "sweep.values=[4]", "audit.every=0"], r"^audit\.every: is 0: no run of the sweep"),
    (["sweep.key=client.batch_size", "sweep.values=[4]", "audit.attacks=[]"], r"^audit\.attacks: is empty: no run"),
])
def test_bad_sweep_keys_and_values_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan(_load(*overrides))


def test_bad_sweep_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "audit.attacks=[idlg]", "sweep.key=client.local_epochs", "sweep.values=[1,two]",
                 "client.local_steps=0",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "client.local_epochs" in err[0] and "expected an integer" in err[0]
    assert not out.exists() and not (Path("runs").exists() and any(Path("runs").glob("sweep-*")))


@pytest.mark.parametrize("overrides, message", [
    (["sweep.key=client.batch_size", "sweep.values=[1,1000]"],
     r"^sweep\.values: value 1000 for client\.batch_size: 1000 is more than the 160 images"),
    (["sweep.key=partition.alpha", "sweep.values=[0.5,0.001]", "fl.num_clients=10", "sweep.seeds=[0,1]"],
     r"^sweep\.values: value 0\.001 at seed 0 for partition\.alpha: Dirichlet\(0\.001\) left a client"),
])
def test_a_value_the_runs_own_checks_refuse_is_refused_before_the_sweep(tmp_path, capsys, overrides, message):
    """Checks that need the data (its size, the partitions at each seed) hold for every value,
    as `fedattack run` makes them, before anything is written."""
    with pytest.raises(ConfigError, match=message):
        check_runs(*plan(_load(*overrides))[:2])
    out = tmp_path / "sweep"
    assert main(["sweep", *overrides, "--out", str(out)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not out.exists()


def _summary(acc: float, leaked: dict[str, int], margin: float = 1.0, classes: int = 10) -> Summary:
    attacks = {name: AttackSummary(jobs=2, failed=0, psnr=20.0, ssim=0.5, mse=0.01, label_acc=1.0,
                                   success_rate=n / 2, seconds=1.0, scope=["client"], baseline_psnr=19.0,
                                   baseline_ssim=0.3, margin=margin, leaked=n, recovered=n, images=8)
               for name, n in leaked.items()}
    return Summary(header=RunHeader(num_classes=classes), attacks=attacks, rounds=5, final_test_acc=acc,
                   client_errors=0,
                   defense="none", epsilon=None)


def _runs(table: dict) -> list[report.SweepRun]:
    out = []
    for (value, seed), (acc, leaked) in table.items():
        out.append(report.SweepRun(value=value, seed=seed, label=f"v={value}", run_dir=Path("x"),
                                   reference=value is None, summary=_summary(acc, leaked)))
    return out


def test_breaking_points_the_answer_and_its_cost_over_seeds():
    runs = _runs({
        (None, 0): (0.90, {"idlg": 2, "dlg": 0}), (None, 1): (0.86, {"idlg": 1, "dlg": 0}),
        (0.01, 0): (0.88, {"idlg": 1, "dlg": 0}), (0.01, 1): (0.85, {"idlg": 0, "dlg": 0}),
        (0.1, 0): (0.80, {"idlg": 0, "dlg": 0}), (0.1, 1): (0.74, {"idlg": 0, "dlg": 0}),
        (1.0, 0): (0.50, {"idlg": 0, "dlg": 0}), (1.0, 1): (0.52, {"idlg": 0, "dlg": 0}),
    })
    ans = report.analyze(runs, key="gaussian.sigma", values=[0.01, 0.1, 1.0], seeds=[0, 1],
                         reference="reference run without gaussian")
    assert ans.breaking == {"dlg": report.NEVER, "idlg": "0.1"}  # never succeeded: no breaking point
    assert ans.safe_found and ans.safe_value == 0.1
    assert ans.acc_safe[0] == pytest.approx(0.77) and ans.acc_reference[0] == pytest.approx(0.88)
    # paired by seed: 0.80 - 0.90 and 0.74 - 0.86
    assert ans.cost[0] == pytest.approx(-0.11) and ans.cost[1] == pytest.approx(math.sqrt(2) * 0.01)
    text = ans.sentence()
    assert "gaussian.sigma = 0.1" in text and "0.770" in text and "0.880" in text and "± 0.014" in text
    assert report.frontier_legend_title(ans) == "red circle: breaking point"
    # an attack still leaking at the strongest value: not stopped, and no safe value
    runs[-1].summary = _summary(0.52, {"idlg": 1, "dlg": 0})
    ans = report.analyze(runs, key="gaussian.sigma", values=[0.01, 0.1, 1.0], seeds=[0, 1], reference="r")
    assert ans.breaking["idlg"] == report.NOT_STOPPED and not ans.safe_found
    assert report.frontier_legend_title(ans) is None  # no circle drawn: no legend for one
    assert ans.sentence().startswith("No value of gaussian.sigma stopped every attack: at the strongest setting whose "
                                     "run finished (1.0) some attack still recovered images under seed 1 (of seeds 0, "
                                     "1).")  # not seed 0, whose run there leaked nothing
    runs[-2].summary = _summary(0.50, {"idlg": 0, "dlg": 1})
    assert "some attack still recovered images (seeds 0, 1)." in report.analyze(
        runs, key="gaussian.sigma", values=[0.01, 0.1, 1.0], seeds=[0, 1], reference="r").sentence()
    runs[-2].summary = _summary(0.50, {"idlg": 0, "dlg": 0})
    # the strongest value's runs failed: the answer names the strongest value that ran, not the one configured
    runs[-1].summary = runs[-2].summary = None
    ans = report.analyze(runs, key="gaussian.sigma", values=[0.01, 0.1, 1.0], seeds=[0, 1], reference="r")
    assert ans.safe_found and ans.safe_value == 0.1 and ans.acc_reference[0] == pytest.approx(0.88)
    for r in runs:
        if r.value == 0.1:
            r.summary = None
    ans = report.analyze(runs, key="gaussian.sigma", values=[0.01, 0.1, 1.0], seeds=[0, 1], reference="r")
    assert "at the strongest setting whose run finished (0.01)" in ans.sentence()
    assert "4 runs did not finish and are left out" in ans.sentence()
    ans = report.analyze([r for r in runs if r.reference], key="gaussian.sigma", values=[0.01], seeds=[0, 1],
                         reference="r")
    assert ans.sentence().startswith("No run at a value of gaussian.sigma finished")


def test_a_sweep_where_nothing_leaked_even_without_the_defense_names_no_safe_value():
    runs = _runs({(None, 0): (0.90, {"idlg": 0}), (0.01, 0): (0.90, {"idlg": 0}), (1.0, 0): (0.90, {"idlg": 0})})
    ans = report.analyze(runs, key="gaussian.sigma", values=[0.01, 1.0], seeds=[0], reference="reference run")
    assert ans.nothing_leaked and not ans.safe_found and ans.safe_value is None
    assert ans.breaking == {"idlg": report.NEVER}
    assert ans.sentence().startswith("No attack recovered any image at any value of gaussian.sigma, nor in the "
                                     "reference run")
    runs[0].summary = _summary(0.90, {"idlg": 1})  # the reference leaks: the weakest value is safe
    ans = report.analyze(runs, key="gaussian.sigma", values=[0.01, 1.0], seeds=[0], reference="reference run")
    assert not ans.nothing_leaked and ans.safe_found and ans.safe_value == 0.01
    assert "no cost (a change of +0.000" in ans.sentence()  # equal accuracy is no cost, not a cost of 0


def test_a_reference_at_chance_has_no_utility_to_lose_and_the_answer_says_so():
    """A sigmoid LeNet on two classes after a round or two stays at 0.500, with the defense and
    without: the answer called that 'no cost'."""
    runs = _runs({(None, 0): (0.50, {"idlg": 1}), (0.01, 0): (0.50, {"idlg": 0})})
    for r in runs:
        r.summary = replace(r.summary, header=RunHeader(num_classes=2))
    ans = report.analyze(runs, key="gaussian.sigma", values=[0.01], seeds=[0], reference="reference run")
    assert ans.safe_found and ans.at_chance() and "no cost" not in ans.sentence()
    assert "which is at chance (2 classes): its model did not learn" in ans.sentence()
    runs[0].summary = replace(runs[0].summary, final_test_acc=0.9)  # it learned: the cost is measured
    ans = report.analyze(runs, key="gaussian.sigma", values=[0.01], seeds=[0], reference="reference run")
    assert not ans.at_chance() and "a cost of 0.400" in ans.sentence()


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [k for k, _ in attrs]


@pytest.mark.parametrize("defenses", ["[gaussian]", "[clip,gaussian]"])
def test_a_defense_listed_in_the_config_is_swept_against_a_reference_without_it(defenses):
    """A config that lists the swept defense (as the defenses recipe does) was refused: its
    reference kept the defense's section after dropping the defense."""
    key, runs, reference = plan(_load("sweep.key=gaussian.sigma", "sweep.values=[0.1,1.0]",
                                      f"client.defenses={defenses}"))
    check_runs(key, runs)
    assert reference == "reference run without gaussian"
    assert [(c.client.defenses, r.reference) for r, c in runs][-1] == ([d for d in ["clip"] if "clip" in defenses],
                                                                       True)
    assert [c.defense("gaussian").sigma for r, c in runs if not r.reference] == [0.1, 1.0]


def test_the_reference_is_its_own_run_or_the_configured_value_among_the_swept():
    runs = _runs({(None, 0): (0.9, {"idlg": 2}), (1, 0): (0.9, {"idlg": 1})})
    assert [r.value for r in report.reference_runs(runs)] == [None]
    swept = [r for r in runs if not r.reference]
    swept[0].label += " (as configured)"
    assert report.reference_runs(swept) == swept[:1]
    ans = report.analyze(swept, key="client.local_epochs", values=[1], seeds=[0], reference="r")
    assert ans.acc_reference == (0.9, 0.0)


def test_sweep_files_hold_the_answer(tmp_path):
    runs = _runs({(None, 0): (0.9, {"idlg": 2}), (1, 0): (0.9, {"idlg": 1}), (5, 0): (0.6, {"idlg": 0})})
    for r in runs:
        r.run_dir = tmp_path / "runs" / f"v{r.value}"
    for r in runs[:2]:  # the last run has no directory: a stop kept it from starting
        r.run_dir.mkdir(parents=True)
        (r.run_dir / "report.html").write_text("<html></html>")
    ans = report.analyze(runs, key="client.local_epochs", values=[1, 5], seeds=[0], reference="reference run")
    table = report.rows(runs, ans)
    report.write_csv(tmp_path / "sweep.csv", table)
    report.write_json(tmp_path / "sweep.json", ans, table)
    points = report.per_value(table, [1, 5])
    report.plot_frontier(tmp_path / "frontier.png", points, ans, [r for r in runs if r.reference])
    report.plot_protocol(tmp_path / "protocol.png", points, [1, 5], "client.local_epochs")
    report.render_html(tmp_path / "sweep.html", answer=ans, table=table, points=points, runs=runs,
                       plots=["frontier.png", "protocol.png"])
    rows = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert [(r["value"], r["reference"], r["breaking_point"]) for r in rows] == [("", "True", "5"), ("1", "False", "5"),
                                                                               ("5", "False", "5")]
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["safe_value"] == 5 and saved["breaking_points"] == {"idlg": "5"}
    assert "(one seed: no uncertainty" in saved["answer"]
    assert saved["test_acc_reference"] == {"mean": 0.9, "std_over_seeds": 0.0}
    assert saved["accuracy_change"]["mean"] == pytest.approx(-0.3)
    page = (tmp_path / "sweep.html").read_text()
    parser = _Tags()
    parser.feed(page)
    assert parser.tags.count("img") == 2 and "script" not in parser.tags
    assert "client.local_epochs = 5" in page and "the highlighted row is the answer" in page
    # a reference without a value of the key (a defense sweep's, the defense off) has its own row
    assert "<tr><td>reference run</td><td>0.900</td><td>" in page
    assert page.count('href="runs/') == 2 and 'href="runs/v5' not in page  # no link to a report never written
    # no value stopped the attack: no row is highlighted, and the caption does not say one is
    runs[-1].summary = runs[1].summary
    ans = report.analyze(runs, key="client.local_epochs", values=[1, 5], seeds=[0], reference="reference run")
    report.render_html(tmp_path / "sweep.html", answer=ans, table=report.rows(runs, ans), points=points, runs=runs,
                       plots=[])
    page = (tmp_path / "sweep.html").read_text()
    assert not ans.safe_found and "highlighted" not in page and 'class="safe"' not in page


@pytest.mark.slow
def test_sweep_writes_table_frontier_protocol_map_and_page(tmp_path):
    out = tmp_path / "sweep"
    code = main(["sweep", "audit.attacks=[idlg]", "idlg.iterations=3", "fl.num_clients=2", "fl.rounds=1",
                 "sweep.defense=topk", "sweep.values=[1.0,0.01]", "sweep.parallel=2", "--out", str(out), "--quiet"])
    assert code == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [(r["value"], r["reference"]) for r in rows] == [("1.0", "False"), ("0.01", "False"), ("", "True")]
    assert all(r["attack"] == "idlg" and 0 <= float(r["test_acc"]) <= 1 for r in rows)
    for name in ("frontier.png", "protocol.png", "sweep.html", "sweep.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "runs").glob("*/leakage.csv"))) == 3
    assert json.loads((out / "sweep.json").read_text())["answer"]


def test_an_interrupted_sweep_keeps_the_answer_of_the_runs_that_finished(tmp_path, monkeypatch, capsys):
    import fedattack.sweep as sweep

    real, calls = sweep._run_one, []

    def first_then_interrupt(cfg, run_dir, log, verbose=False):
        calls.append(run_dir)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(cfg, run_dir, log, verbose=verbose)

    monkeypatch.setattr(sweep, "_run_one", first_then_interrupt)
    out = tmp_path / "sweep"
    code = main(["sweep", "audit.attacks=[idlg]", "idlg.iterations=3", "fl.num_clients=2", "fl.rounds=1",
                 "sweep.defense=topk", "sweep.values=[1.0,0.01]", "sweep.parallel=1", "--out", str(out), "--quiet"])
    assert code == 130  # as for an interrupt
    answer = json.loads((out / "sweep.json").read_text())
    assert len(answer["failed_runs"]) == 2 and (out / "sweep.html").is_file()
    assert [r["value"] for r in csv.DictReader((out / "sweep.csv").open()) if r["test_acc"]] == ["1.0"]
    assert [r["attack"] for r in csv.DictReader((out / "sweep.csv").open())][1:] == ["(run did not finish)"] * 2

    # `fedattack report SWEEP_DIR` re-renders the answer from the runs on disk: one finished since counts
    _, runs, _ = plan(fconfig.load(out / "config.yaml"))
    sweep._place(runs, out)
    first, second = runs[0][0].run_dir, runs[1][0].run_dir
    shutil.copytree(first, second)  # as if the second run had finished after the interrupt
    capsys.readouterr()
    monkeypatch.chdir(out.parent)  # named relative to the working directory: the files keep absolute run paths
    assert main(["report", out.name]) == 0
    assert "report: " + str(out / "sweep.html") in capsys.readouterr().out
    assert {r["run_dir"] for r in csv.DictReader((out / "sweep.csv").open())} == {str(r.run_dir) for r, _ in runs}
    assert len(json.loads((out / "sweep.json").read_text())["failed_runs"]) == 1
    assert [r["value"] for r in csv.DictReader((out / "sweep.csv").open()) if r["test_acc"]] == ["1.0", "0.01"]
    # a run that was stopped early answers for the rounds it finished only: left out, not counted as safe
    saved = json.loads((second / "summary.json").read_text())
    saved["interrupted"] = {"reason": "SIGINT", "signal": 2, "abandoned_jobs": 0}
    (second / "summary.json").write_text(json.dumps(saved))
    assert main(["report", str(out)]) == 0
    assert len(json.loads((out / "sweep.json").read_text())["failed_runs"]) == 2
    assert [r["value"] for r in csv.DictReader((out / "sweep.csv").open()) if r["test_acc"]] == ["1.0"]


def test_a_stop_reaches_the_run_in_progress_and_the_sweep_exits_with_its_code(tmp_path):
    """SIGTERM to the sweep alone (`docker stop`, systemd): the run it is running stops cleanly
    with its results, no later run starts, the sweep exits 143, and its directory re-renders."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "fedattack", "sweep", "audit.attacks=[invgrad]",
                             "invgrad.iterations=100000", "fl.num_clients=2", "fl.rounds=1", "sweep.key=client.lr",
                             "sweep.values=[0.01,0.02]", "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not any(out.glob("runs/*/leakage.csv")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)  # the first run is under way: its directory is open
    proc.send_signal(signal.SIGTERM)
    text = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, text
    first = sorted(out.glob("runs/*/summary.json"))
    assert len(first) == 1 and json.loads(first[0].read_text())["interrupted"]["reason"] == "SIGTERM"
    assert len(list(out.glob("runs/*.log"))) == 1  # the second run never started
    assert "sweep stopped by SIGTERM" in text and "Traceback" not in text
    (out / "sweep.json").unlink()  # as if stopped before the answer was first written: it re-renders all the same
    assert main(["report", str(out)]) == 0 and len(json.loads((out / "sweep.json").read_text())["failed_runs"]) == 3


def test_sweep_time_left_counts_the_time_already_spent():
    from fedattack.sweep import _estimate

    assert _estimate(4, None, 1, 30.0) == "; no run finished yet"
    assert _estimate(4, 100.0, 1, 300.0) == "; about 1 min 30 s left"  # 3 done in 300 s, one to go: 100 s
    assert _estimate(4, 20.0, 1, 20.0) == "; about 60 s left"
    assert _estimate(4, 100.0, 2, 20.0) == "; about 3 min left"  # two at a time
    assert _estimate(4, 100.0, 1, 500.0) == "; past the estimate from the finished runs"


def test_a_verbose_sweep_asks_each_run_for_the_libraries_logs(tmp_path, monkeypatch):
    import argparse

    import fedattack.sweep as sweep

    argvs = []

    class Finished:
        def __init__(self, argv, **kwargs):
            argvs.append(argv)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(sweep.subprocess, "Popen", Finished)
    cfg = fconfig.load(None, [])
    for verbose in (False, True):
        assert sweep._run_one(cfg, tmp_path / f"run{verbose}", tmp_path / f"run{verbose}.log", verbose=verbose) == 0
    assert [a[-1] for a in argvs] == ["--quiet", "--verbose"]
    parser = argparse.ArgumentParser()
    sweep._sweep_parser(parser)
    assert parser.parse_args(["--verbose", "sweep.defense=topk"]).verbose
