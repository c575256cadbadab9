"""Typed results: attack jobs' outcomes, and the run directory that records and reads them back."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from fedattack import config as fconfig
from fedattack.attacks import ATTACKS, register_attack
from fedattack.attacks.base import AttackSpec
from fedattack.errors import AttackFailure
from fedattack.report.store import RunStore, load_run
from fedattack.report.summary import summarize
from fedattack.results import JobResult, RoundResult, RunHeader, Score
from fedattack.server.jobs import AttackJob, run_job
from fedattack.testing.cases import synthetic_update
from fedattack.threat import Reconstruction


def _result(**kw) -> JobResult:
    base = dict(round=1, client=0, attack="idlg", defense="none", status="ok", seconds=1.23456,
                score=Score(psnr=31.23456, ssim=0.612345, mse=0.0012345, label_acc=1.0, recovered=1, num_images=2))
    return JobResult(**{**base, **kw})


def test_recovered_labels_read_as_plain_numbers_and_as_counts_past_eight():
    import numpy as np

    assert _result().labels_text == "-"
    assert _result(recon_labels=np.array([3, 1, 1], dtype=np.int64)).labels_text == "1 1 3"
    many = _result(recon_labels=np.array([2] * 5 + [0] * 10 + [6], dtype=np.int64)).labels_text
    assert many == "0 x10, 2 x5, 6 x1 (16 in all)"


def test_job_results_hold_the_precision_the_run_directory_records():
    r = _result()
    assert (r.seconds, r.score.psnr, r.score.ssim, r.score.mse) == (1.23, 31.23, 0.6123, 0.00123)
    assert r.success and r.label == "idlg" and r.row_id == "r001_c0_idlg"
    failed = _result(status="failed", adaptive=True, client="aggregate", score=Score(num_images=2))
    assert not failed.success and failed.label == "idlg (adaptive)" and failed.row_id == "r001_caggregate_idlg_adaptive"
    assert math.isnan(failed.score.psnr)


def test_the_run_directory_reads_back_the_typed_results_it_was_written_from(tmp_path):
    cfg = fconfig.load(None, ["audit.attacks=[idlg]", "server.mode=honest", "seed=7"])
    store = RunStore(tmp_path / "run", cfg=cfg)
    results = [_result(), _result(client=1, attack="dlg", score=Score(psnr=12.0, ssim=0.1, num_images=2)),
               _result(client="aggregate", attack="cpa", status="failed", score=Score(num_images=4),
                       error="AttackFailure: nothing to read", traceback="Traceback ...\nAttackFailure: nothing to read",
                       epsilon=2.5, scope="aggregate")]
    rounds = [RoundResult(round=1, train_loss=0.69, test_loss=0.7, test_acc=0.5, replies=2, jobs=3, seconds=1.5),
              RoundResult(round=2, train_loss=0.6, test_acc=0.55, replies=2, errors=1, epsilon=3.0)]
    for r in results:
        store.add_result(r)
    for r in rounds:
        store.add_round(r)
    summary = store.finish()

    run = load_run(tmp_path / "run")
    assert run.results == results and run.rounds == rounds
    h = run.header
    assert (h.server_mode, h.dataset, h.model, h.strategy, h.seed, h.defense) == ("honest", "lfw-subset", "mlp",
                                                                                  "fedavg", 7, "none")
    assert (h.success_ssim, h.success_margin, h.configured_attacks) == (0.5, 0.5, ("idlg",))
    assert run.summary() == summary
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary.to_dict()))
    assert on_disk["attacks"]["cpa"] == {"jobs": 1, "failed": 1, "psnr": None, "ssim": None, "mse": None,
                                         "label_acc": None, "success_rate": None, "seconds": 1.23,
                                         "scope": ["aggregate"], "baseline_psnr": None, "baseline_ssim": None,
                                         "margin": None, "lpips": None, "leaked": 0, "recovered": 0, "images": 0}
    assert on_disk["interrupted"]["reason"] == "2 of 5 rounds recorded"  # the default config runs 5
    assert (on_disk["rounds"], on_disk["client_errors"], on_disk["epsilon"], on_disk["final_test_acc"]) == (2, 1, 3.0,
                                                                                                           0.55)
    rows = list(csv.DictReader((tmp_path / "run" / "leakage.csv").open()))
    assert [r["traceback"] for r in rows] == ["", "", "errors/r001_caggregate_cpa.txt"]
    assert rows[2]["error"] == "AttackFailure: nothing to read" and rows[0]["success"] == "True"


def _scored(client, attack: str, psnr: tuple[float, float], adaptive: bool = False) -> JobResult:
    from fedattack.results import ImageScores

    per = ImageScores(match=np.array([0, 1]), psnr=np.array(psnr), ssim=np.array([0.61, 0.2]),
                      mse=np.array([0.01, 0.02]),
                      baseline_psnr=np.array([15.0, 16.0]), baseline_ssim=np.array([0.3, 0.4]),
                      recovered=np.array([True, False]), index=np.array([7, 3]), lpips=np.array([np.nan, np.nan]))
    return _result(client=client, attack=attack, adaptive=adaptive,
                   score=Score(psnr=float(np.mean(psnr)), ssim=0.4, num_images=2, recovered=1, per_image=per))


def test_two_runs_whose_jobs_finish_in_another_order_write_the_same_tables(tmp_path):
    results = [_scored(1, "invgrad", (30.1, 12.0)), _scored(0, "invgrad", (22.0, 11.0)),
               _scored(0, "invgrad", (21.0, 14.0), adaptive=True), _scored("aggregate", "cpa", (18.0, 9.0)),
               _scored(0, "dlg", (12.5, 10.5)),
               _result(client=1, attack="dlg", status="failed", score=Score(num_images=2),
                       error="AttackFailure: diverged", traceback="Traceback ...")]
    files = {}
    for name, order in (("a", results), ("b", results[::-1])):
        store = RunStore(tmp_path / name, cfg=fconfig.load(None, ["audit.attacks=[dlg,invgrad]", "fl.rounds=1"]))
        for i, r in enumerate(order):
            store.add_result(replace(r, seconds=1.0 + i))  # the timings differ from run to run too
        store.add_round(RoundResult(round=1, train_loss=0.6, test_acc=0.5, replies=2))
        store.finish()
        files[name] = {t: (tmp_path / name / t).read_text() for t in ("leakage.csv", "images.csv")}
    assert files["a"]["images.csv"] == files["b"]["images.csv"]
    rows = {name: list(csv.DictReader(io.StringIO(f["leakage.csv"]))) for name, f in files.items()}
    assert [{**r, "seconds": ""} for r in rows["a"]] == [{**r, "seconds": ""} for r in rows["b"]]
    assert [(r["client"], r["attack"], r["adaptive"]) for r in rows["a"]] == [
        ("0", "dlg", "False"), ("0", "invgrad", "False"), ("0", "invgrad", "True"), ("1", "dlg", "False"),
        ("1", "invgrad", "False"), ("aggregate", "cpa", "False")]
    assert [r["client"] for r in csv.DictReader(io.StringIO(files["a"]["images.csv"]))] == ["0"] * 6 + ["1"] * 2 + [
        "aggregate"] * 2
    assert load_run(tmp_path / "a").results[0].attack == "dlg"  # the report reads them in that order


def _stored_run(tmp_path):
    store = RunStore(tmp_path / "run", cfg=fconfig.load(None, ["audit.attacks=[idlg]", "fl.rounds=2"]))
    for client in (0, 1, 2):
        store.add_result(_result(client=client))
    for rnd in (1, 2):
        store.add_round(RoundResult(round=rnd, train_loss=0.6, test_acc=0.5 + rnd / 10, replies=3))
    store.finish()
    return tmp_path / "run"


@pytest.mark.parametrize("table,keep", [("leakage.csv", 41), ("leakage.csv", 14), ("rounds.csv", 8)])
def test_a_last_line_cut_by_a_kill_is_left_out_and_named(tmp_path, table, keep):
    from fedattack.cli import main

    run_dir = _stored_run(tmp_path)
    path = run_dir / table
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:keep])  # a kill while the last row was appended
    run = load_run(run_dir)
    assert len(run.results) == (2 if table == "leakage.csv" else 3)
    assert len(run.rounds) == (1 if table == "rounds.csv" else 2)
    assert run.cut == (f"{table} line {len(lines)} is incomplete (it has no line end): the run stopped while "
                       "writing it; left out",)
    assert main(["report", str(run_dir)]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["attacks"]["idlg"]["jobs"] == len(run.results)


def test_a_damaged_line_before_the_last_is_one_error_naming_file_and_line(tmp_path, capsys):
    from fedattack.cli import main

    run_dir = _stored_run(tmp_path)
    path = run_dir / "leakage.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace("False", "no", 1)  # the `adaptive` column
    path.write_text("".join(lines))
    assert main(["report", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fedattack: error: {path}: line 3 is damaged (expected True or False")


def test_summary_means_only_reconstructions_and_counts_failures():
    results = [_result(), _result(score=Score(psnr=20.0, ssim=0.2, recovered=0, num_images=2)),
               _result(status="error", score=Score(num_images=2), error="KeyError: 'x'")]
    s = summarize(results, [], RunHeader()).attacks["idlg"]
    assert (s.jobs, s.failed, s.psnr, s.ssim, s.success_rate) == (3, 1, 25.615, 0.4062, 0.5)


@pytest.fixture(scope="module")
def update():
    return synthetic_update([1, 3], num_classes=4, shape=(1, 8, 8))


def _job(name: str, obs, **kw) -> AttackJob:
    return AttackJob(round=1, client=0, attack=name, params=None, observation=obs, **kw)


@pytest.mark.parametrize("strict", [False, True])
def test_attack_failures_are_results_and_bugs_are_errors_unless_strict(update, strict):
    obs, truth = update

    def fails(obs, params, ctx):
        raise AttackFailure("no bin caught a sample")

    def buggy(obs, params, ctx):
        return obs.update["no such layer"]

    with ATTACKS.temporarily("test-fails", AttackSpec("test-fails", fails, dict, "test")), \
            ATTACKS.temporarily("test-buggy", AttackSpec("test-buggy", buggy, dict, "test")):
        failed = run_job(_job("test-fails", obs, strict=strict), truth)
        assert failed.status == "failed" and failed.error == "AttackFailure: no bin caught a sample"
        assert failed.traceback.startswith("Traceback") and "in fails" in failed.traceback
        assert failed.score.num_images == 2
        if strict:
            with pytest.raises(KeyError, match="no such layer"):
                run_job(_job("test-buggy", obs, strict=True), truth)
        else:
            error = run_job(_job("test-buggy", obs, strict=False), truth)
            assert error.status == "error" and error.error == "KeyError: 'no such layer'"
            assert 'obs.update["no such layer"]' in error.traceback


@pytest.mark.parametrize("returned, reason", [
    (lambda obs: torch.zeros(2, 1, 8, 8), "TypeError: attack 'test-contract' returned Tensor, not a fedattack"),
    (lambda obs: Reconstruction(images=torch.zeros(2, 5, 7)),
     "ValueError: attack 'test-contract' returned images of shape (2, 5, 7); the data's images are (N, 1, 8, 8)"),
    (lambda obs: Reconstruction(images=torch.zeros(2, 1, 8, 8), labels=(torch.tensor([1, 3]), "bias")),
     "TypeError: attack 'test-contract' returned labels of type tuple"),
    (lambda obs: Reconstruction(images=torch.zeros(2, 1, 8, 8), labels=torch.tensor([1, 3, 0])),
     "ValueError: attack 'test-contract' returned 3 labels for 2 images"),
    (lambda obs: Reconstruction(images=torch.zeros(2, 1, 8, 8), labels=torch.tensor([1, 4])),
     "ValueError: attack 'test-contract' returned labels 1 to 4; the model's classes are 0 to 3"),
    (lambda obs: Reconstruction(images=None, labels=torch.tensor([-1, 2])),
     "ValueError: attack 'test-contract' returned labels -1 to 2"),
    (lambda obs: Reconstruction(images=torch.zeros(2, 1, 8, 8), labels=torch.tensor([1.0, 3.0])),
     "TypeError: attack 'test-contract' returned labels of dtype torch.float32: class ids are integers"),
    (lambda obs: Reconstruction(images=torch.zeros(2, 1, 8, 8), labels=torch.zeros(2, 10)),
     "ValueError: attack 'test-contract' returned scores over 10 classes; the model has 4"),
])
def test_an_output_that_breaks_the_reconstruction_contract_is_its_own_jobs_error(update, returned, reason):
    """Scoring such an output raised outside the attack's job and ended the whole run."""
    obs, truth = update
    spec = AttackSpec("test-contract", lambda obs, params, ctx: returned(obs), dict, "test")
    with ATTACKS.temporarily("test-contract", spec):
        row = run_job(_job("test-contract", obs, strict=False), truth)
    assert row.status == "error" and row.error.startswith(reason), row.error
    assert row.score.num_images == 2


def test_jobs_made_in_the_test_suite_are_strict(update):
    assert _job("idlg", update[0]).strict  # tests/conftest.py sets FEDATTACK_STRICT=1


def test_register_attack_plugs_into_jobs(update):
    obs, truth = update

    @register_attack("test-echo", paper="test")
    def echo(obs, params, ctx):
        from fedattack.threat import Reconstruction

        return Reconstruction(images=truth.images.clone(), labels=truth.labels.clone())

    try:
        r = run_job(_job("test-echo", obs), truth)
        assert r.status == "ok" and r.score.psnr == 100.0 and r.score.label_acc == 1.0 and r.success
        assert r.truth_pixels.shape == r.recon_pixels.shape == (2, 1, 8, 8)
    finally:
        ATTACKS.unregister("test-echo")


def test_saved_labels_follow_their_images_in_the_private_images_order(update):
    """An attack that returns one of the two images (the second private one) and its label:
    the saved images and labels line up with the private images, the missing one flagged."""
    obs, truth = update

    def half(obs, params, ctx):
        from fedattack.threat import Reconstruction

        return Reconstruction(images=truth.images[1:].clone(), labels=torch.tensor([2]))

    with ATTACKS.temporarily("test-half", AttackSpec("test-half", half, dict, "test")):
        r = run_job(_job("test-half", obs), truth)
    assert r.status == "ok" and r.recon_pixels.shape == (2, 1, 8, 8)
    assert r.recon_matched.tolist() == [False, True] and r.recon_labels.tolist() == [-1, 2]
    assert np.allclose(r.recon_pixels[1], r.truth_pixels[1], atol=1e-6) and np.allclose(r.recon_pixels[0], 0.5)
    assert r.labels_text == "2"


def test_the_budget_in_words_counts_what_the_attack_spends():
    from fedattack.results import RunHeader

    raw = {"audit": {"attacks": ["ggl", "invgrad", "rtf"]}, "ggl": {"optimizer": "cmaes", "budget": 200,
                                                                     "iterations": 2500},
           "invgrad": {"iterations": 300}, "rtf": {"num_bins": 8}}
    assert RunHeader.from_config(raw).budgets == ("ggl 200 loss evaluations (CMA-ES)", "invgrad 300 iterations")
    raw["ggl"]["optimizer"] = "adam"
    assert RunHeader.from_config(raw).budgets[0] == "ggl 2500 iterations"
    dlg = {"audit": {"attacks": ["dlg", "idlg"]}, "dlg": {"iterations": 300, "max_iter": 20, "optimizer": "lbfgs"},
           "idlg": {"iterations": 300, "max_iter": 1, "optimizer": "lbfgs"}}  # an L-BFGS step: up to max_iter
    assert RunHeader.from_config(dlg).budgets == ("dlg 300 iterations (L-BFGS, up to 20 evaluations each)",
                                                  "idlg 300 iterations (L-BFGS, one evaluation each)")
    dlg["dlg"]["optimizer"] = "adam"
    assert RunHeader.from_config(dlg).budgets[0] == "dlg 300 iterations"


def test_a_results_file_names_are_portable_where_an_attack_is_an_import_path():
    from fedattack.results import JobResult

    r = JobResult(round=2, client=3, attack="mypkg.attacks:mine", defense="none", status="ok", seconds=1.0,
                  adaptive=True)
    assert r.row_id == "r002_c3_mypkg.attacks_mine_adaptive"


@pytest.mark.parametrize("client, says", [
    ({"local_steps": 0, "local_epochs": 1, "batch_size": 4, "lr": 0.1}, "1 local epoch of batch 4 at lr 0.1"),
    ({"local_steps": 2, "batch_size": 2, "lr": 0.1}, "2 local steps of batch 2 at lr 0.1"),
    ({"local_steps": 1, "batch_size": 2, "lr": 0.01, "optimizer": "adam"}, "1 local step of batch 2 at lr 0.01 (adam)"),
    ({"local_steps": 3, "batch_size": 2, "lr": 0.1, "momentum": 0.9, "nesterov": True},
     "3 local steps of batch 2 at lr 0.1 (momentum 0.9, Nesterov)"),
    ({"local_steps": 0, "local_epochs": 2, "batch_size": 4, "lr": 0.1, "optimizer": "adam", "weight_decay": 0.01},
     "2 local epochs of batch 4 at lr 0.1 (adam, weight decay 0.01)"),
])
def test_the_header_says_the_clients_protocol_with_its_optimizer(client, says):
    assert RunHeader.from_config({"client": client}).protocol == says


def test_an_update_that_is_not_finite_is_a_failed_row_naming_why(update):
    from dataclasses import replace

    obs, truth = update
    broken = replace(obs, update={k: torch.full_like(v, float("nan")) for k, v in obs.update.items()})
    r = run_job(_job("idlg", broken, strict=True), truth)  # not an error, even where jobs run strict
    assert r.status == "failed" and r.error.startswith("AttackFailure: the update holds NaN or infinity")


def test_a_model_pytorch_cannot_differentiate_twice_fails_gradient_matching_in_one_line():
    from fedattack.testing.cases import observed_update

    obs, truth = observed_update("seed=0", "model.name=tests.plugins.models:hardsigmoid_cnn", "client.local_steps=1",
                                 "client.batch_size=1", indices=[3])
    job = AttackJob(round=1, client=0, attack="idlg", params=ATTACKS.get("idlg").params(iterations=2),
                    observation=obs, strict=True)
    row = run_job(job, truth)
    assert row.status == "failed", row.error  # not an error (a bug): the model cannot be inverted this way
    assert row.error.startswith("AttackFailure: the model uses an operation PyTorch cannot differentiate twice "
                                "(aten::hardsigmoid_backward)"), row.error


def test_an_attacks_job_seed_is_its_own_whatever_else_is_listed(tmp_path):
    from fedattack.cli import main
    from fedattack.server.audit import job_seed

    seeds = {(c, a): job_seed(0, 1, c, a) for c in [*range(40), "aggregate"] for a in ("idlg", "invgrad", "dlg")}
    assert len(set(seeds.values())) == len(seeds)  # no two (client, attack) share one (client*31 + place did)
    assert job_seed(0, 1, 0, "invgrad") != job_seed(1, 1, 0, "invgrad") != job_seed(0, 2, 0, "invgrad")
    psnr = {}
    for listed in ("[invgrad]", "[idlg,invgrad]"):
        out = tmp_path / listed.strip("[]").replace(",", "-")
        idlg = ["idlg.iterations=2"] if "idlg" in listed else []  # a setting of an attack not listed is refused
        assert main(["attack", f"audit.attacks={listed}", "invgrad.iterations=20", *idlg,
                     "client.local_steps=2", "client.batch_size=2", "--out", str(out), "--quiet"]) == 0
        rows = {r["attack"]: r for r in csv.DictReader((out / "leakage.csv").open())}
        psnr[listed] = rows["invgrad"]["psnr"]
    assert psnr["[invgrad]"] == psnr["[idlg,invgrad]"]  # the attack's place in the list was its seed


def test_an_apps_protocol_reads_as_a_runs_does_with_its_train_config_keys_named():
    from fedattack.server.protocol import TrainingProtocol

    fixed = TrainingProtocol(lr=0.1, local_steps=3, batch_size=4, momentum=0.9, weight_decay=0.01, proximal_mu=0.5)
    assert RunHeader.from_config({"protocol": fixed.as_dict()}).protocol == RunHeader.from_config(
        {"client": {"local_steps": 3, "batch_size": 4, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01,
                    "proximal_mu": 0.5}}).protocol == \
        "3 local steps of batch 4 at lr 0.1 (momentum 0.9, weight decay 0.01), FedProx mu 0.5"
    keyed = TrainingProtocol(lr=0.1, batch_size=4, config_keys={"local_epochs": "local-epochs", "momentum": "m"})
    assert RunHeader.from_config({"protocol": keyed.as_dict()}).protocol == (
        "local epochs from the train config's 'local-epochs' of batch 4 at lr 0.1 (momentum from the train "
        "config's 'm')")


@pytest.mark.parametrize("protocol, says", [
    ({"local_epochs": 1, "batch_size": 32, "lr": 0.01}, "1 local epoch of batch 32 at lr 0.01"),
    ({"local_epochs": 3, "batch_size": 32, "lr": 0.01}, "3 local epochs of batch 32 at lr 0.01"),
    ({"local_steps": 1, "batch_size": 2, "lr": 0.1}, "1 local step of batch 2 at lr 0.1"),
])
def test_an_apps_header_counts_its_protocol_in_the_singular_where_there_is_one(protocol, says):
    from fedattack.results import _app_protocol

    assert _app_protocol(protocol) == says
