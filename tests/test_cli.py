"""The `fedattack` command: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import csv
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


def test_failing_attacks_are_recorded_and_the_audit_goes_on(tmp_path):
    out = tmp_path / "fail"
    code = main(["attack", "audit.attacks=[tests.plugins.failing:boom,tests.plugins.failing:nan,idlg]",
                 "idlg.iterations=3", "--out", str(out), "--quiet"])
    assert code == 0
    rows = {r["attack"]: r for r in csv.DictReader((out / "leakage.csv").open())}
    assert rows["tests.plugins.failing:boom"]["status"] == "failed"
    assert "exploded" in rows["tests.plugins.failing:boom"]["error"]
    assert rows["tests.plugins.failing:nan"]["status"] == "failed"
    assert "NaN" in rows["tests.plugins.failing:nan"]["error"]
    assert rows["idlg"]["status"] == "ok"
