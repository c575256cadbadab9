"""The `fedattack` command: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from fedattack.cli import main


def _run(*args: str, cwd=None):
    return subprocess.run([sys.executable, "-m", "fedattack", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("args, field", [
    (["client.lr=0"], "client.lr"),
    (["partition.alpha=-1"], "partition.alpha"),
    (["fl.num_clients=0"], "fl.num_clients"),
    (["audit.attacks=[nope]"], "audit.attacks"),
    (["model.name=vgg"], "model.name"),
    (["data.name=mnist", "data.root=/nonexistent/fedattack", "audit.attacks=[idlg]"], "data.root"),
    (["bogus.key=1"], "bogus"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, field):
    out = tmp_path / "run"
    code = main(["run", *args, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and err.startswith("fedattack: error: " + field), err
    assert "Traceback" not in err
    assert not out.exists()


def test_malformed_yaml_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("fl: {rounds: [\n")
    assert main(["attack", str(bad), "--quiet"]) == 2
    assert "malformed YAML" in capsys.readouterr().err


def test_victim_index_outside_dataset(capsys):
    assert main(["attack", "audit.attacks=[idlg]", "victim.indices=[100000]", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("fedattack: error: victim.indices")


def test_subprocess_exit_code_and_no_traceback():
    res = _run("run", "client.lr=-0.5")
    assert res.returncode == 2
    assert res.stderr.strip() == "fedattack: error: client.lr: must be > 0, got -0.5"


@pytest.mark.parametrize("kind, expected", [
    ("attacks", ["dlg", "idlg"]), ("datasets", ["lfw-subset", "mnist", "fashion-mnist", "cifar10", "cifar100",
                                                 "imagefolder"]),
    ("models", ["lenet", "convnet", "resnet18", "mlp"]), ("strategies", ["fedavg", "fedprox", "fedadam"]),
])
def test_list(capsys, kind, expected):
    assert main(["list", kind]) == 0
    out = capsys.readouterr().out
    for name in expected:
        assert name in out


def test_attack_mode_writes_the_run_files_and_report_rerenders(tmp_path, capsys):
    out = tmp_path / "attack"
    code = main(["attack", "audit.attacks=[idlg]", "idlg.iterations=5", "victim.indices=[0,1,2,3]", "--out", str(out)])
    assert code == 0
    rows = list(csv.DictReader((out / "leakage.csv").open()))
    assert len(rows) == 1 and rows[0]["attack"] == "idlg" and rows[0]["num_images"] == "4"
    printed = capsys.readouterr().out
    assert "idlg" in printed
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_refuses_a_non_empty_out_dir(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["attack", "audit.attacks=[idlg]", "--out", str(tmp_path), "--quiet"]) == 2
    assert (tmp_path / "keep.txt").read_text() == "mine"


FAILING = "tests.plugins.failing"


def test_failing_attacks_are_recorded_and_the_audit_goes_on(tmp_path):
    out = tmp_path / "fail"
    code = main(["attack", f"audit.attacks=[{FAILING}:boom,{FAILING}:nan,idlg]",
                 "idlg.iterations=3", "--out", str(out), "--quiet"])
    assert code == 0
    rows = {r["attack"]: r for r in csv.DictReader((out / "leakage.csv").open())}
    boom, nan = rows[f"{FAILING}:boom"], rows[f"{FAILING}:nan"]
    assert boom["status"] == "failed" and boom["error"] == "AttackFailure: the optimizer exploded"
    assert nan["status"] == "failed" and "NaN" in nan["error"]
    assert rows["idlg"]["status"] == "ok" and rows["idlg"]["traceback"] == ""
    # leakage.csv keeps one line; the run directory keeps the whole traceback beside it
    story = (out / boom["traceback"]).read_text()
    assert boom["traceback"].startswith("errors/") and "Traceback (most recent call last)" in story
    assert "failing.py" in story and story.rstrip().endswith("AttackFailure: the optimizer exploded")
    assert main(["report", str(out)]) == 0  # the typed read-back finds the traceback again
    assert "errors/" in (out / "report.html").read_text()


def test_a_bug_in_an_attack_is_an_error_with_its_traceback_not_a_failure(tmp_path, monkeypatch):
    from fedattack.server.jobs import STRICT_ENV

    monkeypatch.setenv(STRICT_ENV, "0")  # as a user's run records it
    out = tmp_path / "bug"
    assert main(["attack", f"audit.attacks=[{FAILING}:bug,idlg]", "idlg.iterations=3", "--out", str(out),
                 "--quiet"]) == 0
    rows = {r["attack"]: r for r in csv.DictReader((out / "leakage.csv").open())}
    bug = rows[f"{FAILING}:bug"]
    assert bug["status"] == "error" and bug["error"] == "KeyError: 'no such layer'"
    assert 'obs.update["no such layer"]' in (out / bug["traceback"]).read_text()
    assert rows["idlg"]["status"] == "ok"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["attacks"][f"{FAILING}:bug"]["failed"] == 1


def test_strict_jobs_raise_a_bug_in_an_attack(tmp_path):
    # the test suite runs strict (tests/conftest.py): a programming error cannot pass for a failed attack
    with pytest.raises(KeyError, match="no such layer"):
        main(["attack", f"audit.attacks=[{FAILING}:bug]", "--out", str(tmp_path / "strict"), "--quiet"])
