"""The `fedattack` command: exit codes, one-line errors, nothing half-written."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedattack.cli import main


def _run(*args: str, cwd=None):
    return subprocess.run([sys.executable, "-m", "fedattack", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("args, field", [
    (["client.lr=0"], "client.lr"),
    (["partition.alpha=-1"], "partition.alpha"),
    (["fl.num_clients=0"], "fl.num_clients"),
    (["fl.client_cpus=0"], "fl.client_cpus"),  # Flower's actor pool divides by it
    # a federated evaluation that samples more clients than exist waited for them forever
    (["fl.strategy_args={fraction_evaluate: 5}"], "fl.strategy_args.fraction_evaluate: is a share"),
    (["fl.strategy_args={min_evaluate_nodes: 10}"], "fl.strategy_args.min_evaluate_nodes: must be 0 to"),
    (["fl.strategy=fedtrimmedavg", "fl.strategy_args={beta: 0.9}"], "fl.strategy_args: fedtrimmedavg refuses"),
    (["fl.strategy=qfedavg"], "fl.strategy_args: qfedavg refuses these arguments: "),
    (["fl.strategy=fedadam", "fl.strategy_args={eta: abc}"], "fl.strategy_args.eta: must be a float"),
    (["fl.strategy=fedadam", "fl.strategy_args={beta_1: 2}"], "fl.strategy_args.beta_1: must be 0 to 1"),
    (["fl.strategy=krum", "fl.strategy_args={num_malicious_nodes: -1}"], "fl.strategy_args.num_malicious_nodes"),
    (["fl.strategy_args={weighted_by_key: nope}"], "fl.strategy_args.weighted_by_key: fedattack's clients use"),
    (["fl.strategy_args={train_metrics_aggr_fn: os.getcwd}"], "fl.strategy_args.train_metrics_aggr_fn: takes a"),
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
    # the check builds FedProx once, without proximal_mu: Flower's warning about that stays out
    res = _run("run", "fl.strategy=fedprox", "client.proximal_mu=0.1")
    assert res.returncode == 2 and res.stderr.strip().startswith("fedattack: error: client.proximal_mu: ")
    assert res.stderr.strip().count("\n") == 0, res.stderr


@pytest.mark.parametrize("argv, says", [
    (["list", "foo"], "invalid choice: 'foo' (choose from 'attacks'"), ([], "required: command"),
    (["run", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_a_usage_error_is_one_line_exit_2(capsys, argv, says):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and says in err
    # the help that answers it: the subcommand's own where one was named
    assert err.endswith(f"(see fedattack {argv[0]} --help)" if argv else "(see fedattack --help)")


@pytest.mark.parametrize("kind, expected", [
    ("attacks", ["dlg", "idlg"]), ("datasets", ["lfw-subset", "mnist", "fashion-mnist", "cifar10", "cifar100",
                                                 "imagefolder"]),
    ("models", ["lenet", "convnet", "resnet18", "mlp"]), ("strategies", ["fedavg", "fedprox", "fedadam"]),
    ("labels", ["auto ", "bias", "dimitrov", "idlg"]),  # auto, the default, among the methods it picks from
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
    # what the victim trained, and a status line promised while its attack runs
    assert "victim: 4 images [0, 1, 2, 3], 2 local steps of batch 2 at lr 0.1; defense: none" in printed
    assert "waiting for 1 attack job; a status line follows" in printed
    assert json.loads((out / "summary.json").read_text())["num_classes"] == 2  # lfw-subset's: what chance is
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.html").is_file()
    assert json.loads((out / "summary.json").read_text())["num_classes"] == 2  # kept by a re-render
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2  # a folder, but neither a run's nor a sweep's
    assert "no sweep.json" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["report", str(tmp_path / "notes.txt")]) == 2
    assert "notes.txt is a file, not a directory; give a run's or a sweep's directory" in capsys.readouterr().err


def test_report_refuses_a_damaged_config_and_a_screenshot_it_cannot_write_before_rendering(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["attack", "simulations/dlg_zhu2019.yaml", "audit.attacks=[rgap]", "--out", str(out), "--quiet"]) == 0
    (out / "report.html").unlink()
    (tmp_path / "afile").write_text("x")
    capsys.readouterr()
    assert main(["report", str(out), "--screenshot", str(tmp_path / "afile" / "shot.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedattack: error: --screenshot: ") and "\n" not in err
    assert not (out / "report.html").exists()  # refused before the report was rendered again
    for damaged in ("x", "client: 5", "fl: {rounds: [", "- 1"):
        (out / "config.yaml").write_text(damaged)
        assert main(["report", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"fedattack: error: run_dir: {out / 'config.yaml'} is damaged (") and "\n" not in err


def test_attack_mode_says_the_same_after_its_table_with_or_without_a_run_directory(tmp_path, capsys):
    said = []
    for out in ([], ["--out", str(tmp_path / "a")]):
        assert main(["attack", "model.name=convnet", "model.width=4", "audit.attacks=[idlg]", "idlg.iterations=1",
                     "victim.indices=[0,1]", *out]) == 0
        printed = capsys.readouterr().out
        after = printed[printed.index("└"):].splitlines()[1:]
        said.append([line for line in after if not line.startswith("report:")])
    assert said[0] == said[1]
    assert said[0][0] == "0 of 1 audited updates leaked; 0 of 2 training samples recovered (0.0%)"
    assert any("BatchNorm" in line for line in said[0])  # the caveat for a model that trains BatchNorm layers


def test_attack_mode_on_one_image_counts_it_as_one_and_says_why_rgap_fails(tmp_path, capsys):
    out = tmp_path / "one"
    code = main(["attack", "audit.attacks=[rgap,invgrad]", "invgrad.iterations=2", "victim.indices=[3]",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "victim: 1 image [3], 2 local steps of batch 2 at lr 0.1; batch 2 is more than its 1 image: each step " \
           "takes it;" in printed
    assert "rgap inverts one sample's gradient in one step; this update covers 1 example in 2 local steps" in printed
    page = (out / "report.html").read_text()
    assert "over 1 round; 1 sample appeared in audited updates" in page


def test_refuses_a_non_empty_out_dir(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["attack", "audit.attacks=[idlg]", "--out", str(tmp_path), "--quiet"]) == 2
    assert (tmp_path / "keep.txt").read_text() == "mine"


FAILING = "tests.plugins.failing"
ROOT = Path(__file__).resolve().parent.parent


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


# -- every bad input: one line naming the field, exit 2, nothing written -------------------

def _image_folder(root, per_class: int, classes: int = 3):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray((rng.random((12, 12, 3)) * 255).astype("uint8")).save(d / f"{i}.png")
    return root


def _unwritable(tmp_path):
    """A directory nobody here can write into (root ignores permission bits: use /proc)."""
    import os

    if os.geteuid() == 0:
        return "/proc/fedattack-unwritable"
    ro = tmp_path / "readonly"
    ro.mkdir()
    ro.chmod(0o500)
    return str(ro)


# (command, arguments, field); {tmp} is the test's temporary directory, set up by SETUP
BAD_INPUTS = [
    ("run", ["client.lr=nan"], "client.lr"),
    ("run", ["client.lr=inf"], "client.lr"),
    ("run", ["fl.timeout=nan"], "fl.timeout"),
    ("run", ["partition.alpha=.inf"], "partition.alpha"),
    ("run", ["seed=-1"], "seed"),
    ("run", ["seed=18446744073709551616"], "seed"),
    ("run", ["client.batch_size=1000000"], "client.batch_size"),
    ("run", ["data.image_size=100000"], "data.image_size"),
    ("run", ["fl.strategy=fedprox", "fl.strategy_args={proximal_m: 0.5}"], "fl.strategy_args"),
    ("run", ["fl.strategy=fedprox", "fl.strategy_args={proximal_mu: .nan}"], "fl.strategy_args.proximal_mu"),
    ("run", ["audit.attacks=[1]"], "audit.attacks"),
    ("attack", ["victim.indices=[abc]"], "victim.indices"),
    ("attack", ["victim.indices=[1.5]"], "victim.indices"),
    ("run", ["fl.client_cpus=1000"], "fl.client_cpus"),
    ("run", ["fl.client_cpus=0.0001"], "fl.client_cpus"),  # 20,000 client processes on 2 cores
    ("run", ["fl.strategy=fedprox", "client.proximal_mu=0.1"], "client.proximal_mu"),  # not Flower's warning too
    ("run", ["ray.num_cpus=1000"], "ray.num_cpus"),
    ("attack", ["victim.client=-1"], "victim.client"),
    ("attack", ["client.defenses=[dpsgd,dpsgd]"], "client.defenses"),
    ("run", ["client.defenses=[clip,gaussian,clip]"], "client.defenses"),
    ("run", ["client.optimizer=adam", "client.momentum=0.9"], "client.momentum"),
    ("sweep", ["sweep.key=client.local_epochs", "sweep.values=[1,2]"], "sweep.key"),
    ("sweep", ["sweep.key=partition.alpha", "sweep.values=[0.1,1]", "partition.name=iid"], "sweep.key"),
    ("sweep", ["sweep.key=seed", "sweep.values=[1,2]"], "sweep.key"),
    ("run", ["fl.strategy_args={fraction_train: 0.5}"], "fl.strategy_args.fraction_train"),
    ("sweep", ["sweep.key=audit.attacks", "sweep.values=[[idlg],[dlg]]"], "sweep.key"),
    ("run", ["audit.job_timeout=-1"], "audit.job_timeout"),
    ("attack", ["audit.calibrate=true", "audit.calibration_budget=0"], "audit.calibration_budget"),
    ("attack", ["audit.calibrate=true", "audit.calibration_iteration_factor=0"], "audit.calibration_iteration_factor"),
    ("attack", ["audit.calibrate=true", "audit.calibration_restart_factor=0"], "audit.calibration_restart_factor"),
    ("attack", ["audit.calibrate=true", "audit.calibration_data=nope"], "audit.calibration_data"),
    ("run", ["client.optimizer=rmsprop"], "client.optimizer"),
    ("run", ["client.nesterov=true"], "client.nesterov"),
    ("attack", ["audit.calibrate=true", "audit.calibration_data=photos"], "audit.calibration_data"),
    ("attack", ["audit.calibrate=true", "audit.calibration_samples=3"], "audit.calibration_samples"),
    ("run", ["audit.calibrate=true", "audit.calibration_samples=3"], "audit.calibration_samples"),
    ("attack", ["gaussian.sigma=0.5", "audit.attacks=[idlg]"], "gaussian"),
    ("run", ["model.name=tests.plugins.models:by_name"], "model.name"),
    ("run", ["model.name=tests.plugins.models:pairs"], "model.name"),
    ("run", ["model.name=tests.plugins.models:extra_logits"], "model.name"),
    ("attack", ["model.name=tests.plugins.models:pooled_to_one", "client.batch_size=1"], "client.batch_size"),
    ("attack", ["model.name=tests.plugins.models:QuickstartNet"], "model.name"),  # 7 classes, 3x32x32; lfw: 2, 1x32x32
    ("attack", ["model.name=tests.plugins.models:QuickstartNet", "data.name=photos", "data.image_size=28"],
     "model.name"),
    ("attack", ["model.name=tests.plugins.models:QuickstartNet", "data.name=photos", "model.width=4"], "model.width"),
    ("attack", ["client.defenses=[secagg]"], "client.defenses"),
    ("attack", ["client.defenses=[mixup]", "victim.indices=[3]"], "client.defenses"),  # its partner: the image itself
    ("run", ["audit.attacks=[idlg,rtf]"], "server.mode"),
    ("attack", ["audit.labels=foo"], "audit.labels"),
    ("attack", ["audit.attacks=[idlg,idlg]"], "audit.attacks"),
    ("run", ["audit.attacks=[tests.plugins.failing:boom,boom]"], "audit.attacks"),  # one attack, named twice
    ("run", ["audit.attacks=[tests.plugins.failing:one_argument]"], "audit.attacks"),
    ("run", ["audit.attacks=[fedattack.attacks.invgrad:invgrad,invgrad]"], "audit.attacks"),
    ("run", ["client.defenses=[tests.plugins.defense:drop_head,drop-head]"], "client.defenses"),
    ("run", ["client.defenses=[secagg]", "fl.clients_per_round=1"], "fl.clients_per_round"),
    ("run", ["client.defenses=[secagg]", "secagg.num_shares=6", "secagg.reconstruction_threshold=5"],
     "secagg.reconstruction_threshold"),
    ("sweep", ["sweep.defense=gausian", "sweep.values=[1]"], "sweep.defense"),
    ("attack", ["sweep.defense=gaussian", "gaussian.sigma=1.0"], "sweep.defense"),
    ("run", ["sweep.defense=gaussian", "gaussian.sigma=1.0"], "sweep.defense"),
    ("run", ["sweep.key=client.local_epochs", "sweep.values=[1,2]"], "sweep.key"),
    ("run", ["victim.indices=[1,2]"], "victim.indices"),
    ("attack", ["fl.strategy=fedprox"], "fl.strategy"),
    ("run", ["fl.strategy=fedprox", "fl.strategy_args={proximal_mu: -1}"], "fl.strategy_args.proximal_mu"),
    ("run", ["fl.strategy=fedprox", "client.proximal_mu=0.1"], "client.proximal_mu"),
    ("run", ["fl.strategy=bulyan"], "fl.clients_per_round"),  # 2 replies: Flower's Bulyan skips every round
    ("run", ["fl.strategy=bulyan", "fl.clients_per_round=4", "fl.strategy_args={num_malicious_nodes: 1}"],
     "fl.clients_per_round"),
    ("run", ["client.proximal_mu=0.1", "client.defenses=[dpsgd]"], "client.defenses"),
    ("attack", ["fl.rounds=3"], "fl.rounds"),
    ("run", ["fl.rounds"], "fl.rounds"),  # a forgotten value is not a config file's name
    ("sweep", ["sweep.key=client.local_steps", "sweep.values=[1,2]", "victim.client=1"], "victim.client"),
    ("sweep", ["sweep.key=client.local_steps", "sweep.values=[1,2]", "sweep.parallel=4096"], "sweep.parallel"),
    ("train-generator", ["--out", "{tmp}/gen.pt", "sweep.values=[1]"], "sweep.values"),
    ("train-generator", ["--out", "{tmp}/gen.pt", "data.image_size=100000"], "data.image_size"),  # was a crash
    ("train-generator", ["--out", "{tmp}/gen.pt", "--threads", "100000"], "--threads"),  # a segfault
    ("attack", ["audit.threads_per_job=100000"], "audit.threads_per_job"),
    ("attack", ["audit.attacks=[analytic]", "analytic.layer=abc"], "analytic.layer"),
    ("attack", ["audit.attacks=[cpa]", "cpa.layer=abc"], "cpa.layer"),  # was a failed row after training
    ("run", ["audit.attacks=[idlg]", "invgrad.iterations=5"], "invgrad.iterations"),  # was dropped without a word
    ("run", ["audit.attacks=[ggl]", "ggl.generator={tmp}/pickled.pt"], "ggl.generator"),
    ("run", ["{tmp}/list.yaml", "fl.rounds=1"], "config"),
    ("run", ["{tmp}/int.yaml", "fl.rounds=1"], "config"),
    ("run", ["{tmp}/string.yaml", "fl.rounds=1"], "config"),
    ("run", ["{tmp}/zero.yaml"], "config"),
    ("run", ["{tmp}/intkey.yaml"], "1"),
    ("run", ["{tmp}"], "config"),
    ("run", ["--out", "{unwritable}/run"], "--out"),
    ("run", ["--out", "{tmp}/afile"], "--out"),
    ("run", ["--out", "{tmp}/afile/run"], "--out"),
    ("run", ["data.name=imagefolder", "data.root={tmp}/one_per_class"], "data.root"),
    ("run", ["data.name=imagefolder", "data.root={tmp}/fifteen"], "fl.num_clients"),
    ("run", ["data.name=imagefolder", "data.root={tmp}/fifteen", "partition.alpha=1000"], "fl.num_clients"),
    ("train-generator", ["--out", "{tmp}/afile"], "--out"),
    ("train-generator", ["--out", "{tmp}/gen.pt", "--seed", "-1"], "--seed"),
]


def _setup_bad_inputs(tmp):
    import torch

    for name, text in {"list.yaml": "- a\n- b\n", "int.yaml": "3\n", "string.yaml": "hello\n", "zero.yaml": "0\n",
                       "intkey.yaml": "1: 2\n"}.items():
        (tmp / name).write_text(text)
    (tmp / "afile").write_text("mine")
    torch.save({"meta": {}, "state_dict": {}, "payload": _Payload()}, tmp / "pickled.pt")
    _image_folder(tmp / "one_per_class", 1)
    _image_folder(tmp / "fifteen", 5)


class _Payload:
    """Anything that needs pickled code to load."""


@pytest.mark.parametrize("command, args, field", BAD_INPUTS,
                         ids=[f"{c}:{' '.join(a)}" for c, a, _ in BAD_INPUTS])
def test_every_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, command, args, field):
    tmp = tmp_path / "in"
    tmp.mkdir()
    _setup_bad_inputs(tmp)
    work = tmp_path / "cwd"  # runs/<timestamp> would land here
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(p.name for p in tmp.rglob("*"))
    unwritable = _unwritable(tmp_path)
    args = [a.replace("{tmp}", str(tmp)).replace("{unwritable}", unwritable) for a in args]
    if "--out" not in args and command != "train-generator":
        args += ["--out", str(tmp_path / "out")]
    capsys.readouterr()
    code = main([command, *args, "--quiet"] if command != "train-generator" else [command, *args])
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (captured.out[-500:], err)
    assert err.count("\n") == 0 and err.startswith(f"fedattack: error: {field}:"), err
    assert not (tmp_path / "out").exists()
    assert list(work.iterdir()) == []
    assert sorted(p.name for p in tmp.rglob("*")) == before


def test_a_calibration_dataset_that_is_not_there_names_the_calibration_root(tmp_path, capsys):
    code = main(["attack", "audit.calibrate=true", "audit.calibration_data=imagefolder",
                 f"audit.calibration_root={tmp_path / 'nowhere'}", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "audit.calibration_root: " in err and "data.root" not in err, err
    # without a root: the loader's own field is not repeated inside the calibration's line
    assert main(["attack", "audit.calibrate=true", "audit.calibration_data=mnist", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedattack: error: audit.calibration_data: cannot load 'mnist': dataset 'mnist' needs "
                          "data.root (or audit.calibration_root)") and err.count("calibration_root") == 1, err


def test_attack_mode_needs_no_federation_partition(tmp_path):
    """One victim trains: 15 images cannot be split among 8 clients, and need not be."""
    root = _image_folder(tmp_path / "fifteen", 5)
    out = tmp_path / "attack"
    assert main(["attack", "data.name=imagefolder", f"data.root={root}", "audit.attacks=[idlg]", "idlg.iterations=1",
                 "--out", str(out), "--quiet"]) == 0
    assert len(list(csv.DictReader((out / "leakage.csv").open()))) == 1


def test_a_model_factory_gets_act_as_a_callable(tmp_path):
    out = tmp_path / "attack"
    assert main(["attack", "model.name=tests.plugins.models:small_cnn", "audit.attacks=[idlg]", "idlg.iterations=1",
                 "--out", str(out), "--quiet"]) == 0


def test_attack_mode_reports_the_victims_dp_sgd_epsilon(tmp_path):
    out = tmp_path / "attack"
    assert main(["attack", "client.defenses=[dpsgd]", "audit.attacks=[idlg]", "idlg.iterations=1", "--out", str(out),
                 "--quiet"]) == 0
    rows = list(csv.DictReader((out / "leakage.csv").open()))
    assert float(rows[0]["epsilon"]) > 0
    assert json.loads((out / "summary.json").read_text())["epsilon"] == pytest.approx(float(rows[0]["epsilon"]),
                                                                                       rel=1e-3)


def test_a_model_class_of_the_users_own_that_takes_no_arguments_is_audited_reproducibly(tmp_path):
    """Flower's quickstart `Net` as its users write it (no arguments: its own input size and
    classes) plugs in by import path; one seed gives it the same weights, so the same numbers."""
    rows = []
    for out in (tmp_path / "a", tmp_path / "b"):
        assert main(["attack", "model.name=tests.plugins.models:QuickstartNet", "data.name=photos",
                     "client.batch_size=1", "client.local_steps=1", "audit.attacks=[invgrad,rgap]",
                     "invgrad.iterations=3", "--out", str(out), "--quiet"]) == 0
        rows.append({r["attack"]: r for r in csv.DictReader((out / "leakage.csv").open())})
    assert rows[0]["invgrad"]["status"] == "ok" and rows[0]["invgrad"]["psnr"] == rows[1]["invgrad"]["psnr"]
    assert rows[0]["rgap"]["status"] == "failed" and "MaxPool2d" in rows[0]["rgap"]["error"]
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["model"] == "tests.plugins.models:QuickstartNet"


def test_a_model_class_of_the_users_own_on_images_of_other_channels_names_data_channels(tmp_path, capsys):
    out = tmp_path / "attack"  # QuickstartNet takes colour images; lfw-subset is grey
    assert main(["attack", "model.name=tests.plugins.models:QuickstartNet", "data.name=lfw-subset",
                 "audit.attacks=[idlg]", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedattack: error: model.name: ") and "data.channels" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("factory", ["lazy_cnn", "pooled_to_one"])
def test_lazy_layers_and_batchnorm_on_a_one_pixel_map_are_audited(tmp_path, factory):
    out = tmp_path / "attack"
    assert main(["attack", f"model.name=tests.plugins.models:{factory}", "client.batch_size=2", "client.local_steps=1",
                 "audit.attacks=[idlg]", "idlg.iterations=1", "--out", str(out), "--quiet"]) == 0
    assert [r["status"] for r in csv.DictReader((out / "leakage.csv").open())] == ["ok"]


def test_an_lbfgs_attack_that_blows_up_at_its_first_step_is_a_failed_row_not_its_start(tmp_path):
    out = tmp_path / "attack"
    assert main(["attack", "audit.attacks=[dlg]", "dlg.lr=1e12", "dlg.iterations=5", "victim.indices=[3]",
                 "--out", str(out), "--quiet"]) == 0
    (row,) = csv.DictReader((out / "leakage.csv").open())
    assert row["status"] == "failed" and "every restart diverged" in row["error"], row


@pytest.mark.parametrize("command", ["attack", "run"])
@pytest.mark.parametrize("defense, says", [
    ("raises_on_update", "raises_on_update's on_update raised ZeroDivisionError: division by zero"),
    ("loses_a_tensor", "loses_a_tensor's on_update returned a dict without 'body.1.weight'; it returns the update it "
                       "was given, a dict of every parameter's tensor, each of its own shape"),
    ("drops_a_label", "drops_a_label's on_batch returned images of shape (2, 1, 32, 32) and 1 label; it returns (x, "
                      "y), the batch's images of shape (n, 1, 32, 32) and their n labels"),
    ("flattens_a_tensor", "flattens_a_tensor's on_update returned 'body.1.weight' as Tensor of shape (262144,), not "
                          "(256, 1024); it returns the update it was given, a dict of every parameter's tensor, each "
                          "of its own shape"),
])
def test_a_defense_of_ones_own_that_breaks_its_hooks_is_one_line_before_anything_runs(tmp_path, capsys, command,
                                                                                      defense, says):
    out = tmp_path / "run"
    code = main([command, f"client.defenses=[tests.plugins.defense:{defense}]", "audit.attacks=[idlg]",
                 "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == f"fedattack: error: client.defenses: tests.plugins.defense:{says}", err
    assert not out.exists()


def test_a_stuck_attack_is_failed_at_its_time_limit(tmp_path):
    out = tmp_path / "attack"
    code = main(["attack", f"audit.attacks=[{FAILING}:stuck,idlg]", "idlg.iterations=1", "audit.job_timeout=1",
                 "--out", str(out), "--quiet"])
    assert code == 0
    rows = {r["attack"]: r for r in csv.DictReader((out / "leakage.csv").open())}
    assert rows[f"{FAILING}:stuck"]["status"] == "failed"
    assert "timed out after 1 s (audit.job_timeout)" in rows[f"{FAILING}:stuck"]["error"]
    assert rows["idlg"]["status"] == "ok"
    assert json.loads((out / "summary.json").read_text())["interrupted"] is None


def test_the_command_exits_with_its_code_while_an_abandoned_attack_still_runs(tmp_path):
    out = tmp_path / "attack"
    proc = _run("attack", f"audit.attacks=[{FAILING}:stuck,idlg]", "idlg.iterations=1", "audit.job_timeout=1",
                "--out", str(out), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "idlg" in proc.stdout  # the table was flushed before the process ended
    rows = {r["attack"]: r["status"] for r in csv.DictReader((out / "leakage.csv").open())}
    assert rows == {f"{FAILING}:stuck": "failed", "idlg": "ok"}


def test_overrides_may_follow_options(tmp_path):
    out = tmp_path / "attack"
    assert main(["attack", "--out", str(out), "audit.attacks=[idlg]", "idlg.iterations=1", "--quiet"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["idlg"]["iterations"] == 1
