"""A small audited Flower simulation end to end, and the run directory it leaves."""

from __future__ import annotations

import csv
import json

import pytest

from fedattack import config as fconfig
from fedattack.simulate import run


@pytest.mark.slow
def test_audited_simulation_writes_a_complete_run_directory(tmp_path):
    from tests.plugins import user_strategy

    user_strategy.SEEN.clear()
    cfg = fconfig.load(None, [
        "fl.num_clients=3", "fl.clients_per_round=2", "fl.rounds=2", "partition.alpha=1.0",
        "fl.strategy=tests.plugins.user_strategy:RecordingFedAvg",
        "audit.attacks=[idlg,dlg]", "idlg.iterations=5", "dlg.iterations=5", "audit.max_concurrent=1",
    ])
    out = tmp_path / "run"
    summary = run(cfg, out_dir=out)
    for name in ("config.yaml", "leakage.csv", "rounds.csv", "summary.json", "report.html"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "leakage.csv").open()))
    # every sampled client of every round, by every attack
    assert len(rows) == 2 * 2 * 2
    assert {r["attack"] for r in rows} == {"idlg", "dlg"}
    assert {int(r["round"]) for r in rows} == {1, 2}
    for r in rows:
        assert r["status"] == "ok", r["error"]
        assert -1 <= float(r["ssim"]) <= 1 and float(r["psnr"]) > 0
        assert r["defense"] == "none"
    rounds = list(csv.DictReader((out / "rounds.csv").open()))
    assert [int(r["round"]) for r in rounds] == [1, 2]
    assert all(int(r["errors"]) == 0 and int(r["replies"]) == 2 for r in rounds)
    assert 0 <= float(rounds[-1]["test_acc"]) <= 1
    assert len(list((out / "images").glob("*.png"))) == len(rows)
    # each scored image is known by its dataset index, held by the client whose update it is in
    from fedattack.experiment import build

    parts = build(cfg).partitions
    images = list(csv.DictReader((out / "images.csv").open()))
    assert images and all(int(i["owner"]) == int(i["client"]) for i in images)
    assert all(int(i["index"]) in set(parts[int(i["client"])].tolist()) for i in images)
    assert json.loads((out / "summary.json").read_text())["attacks"]["dlg"]["jobs"] == 4
    assert summary.header.server_mode == "honest" and summary.attacks["dlg"].jobs == 4
    # the user's strategy ran unchanged and never saw the audit-only record
    assert [s["round"] for s in user_strategy.SEEN] == [1, 2]
    assert all(s["n"] == 2 and "audit" not in s["keys"] for s in user_strategy.SEEN)


@pytest.mark.slow
def test_a_malicious_server_run_imprints_the_model_and_robs_the_fed(tmp_path):
    cfg = fconfig.load(None, ["fl.num_clients=2", "fl.clients_per_round=1", "fl.rounds=1", "partition.alpha=1.0",
                              "server.mode=malicious", "audit.attacks=[rtf]", "client.batch_size=16",
                              "client.local_steps=1"])
    summary = run(cfg, out_dir=tmp_path / "run")
    rows = list(csv.DictReader((tmp_path / "run" / "leakage.csv").open()))
    assert len(rows) == 1 and rows[0]["status"] == "ok", rows[0]["error"]
    assert summary.header.server_mode == "malicious" and summary.attacks["rtf"].recovered >= 4


def test_a_run_whose_every_client_fails_says_why_and_exits_1(tmp_path, capsys):
    import csv

    from fedattack.cli import main

    out = tmp_path / "run"
    code = main(["run", "client.defenses=[tests.plugins.defense:breaks_training]", "fl.rounds=1", "fl.num_clients=2",
                 "fl.clients_per_round=2", "audit.attacks=[idlg]", "idlg.iterations=2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    said = ("client.defenses: tests.plugins.defense:breaks_training's on_batch raised ValueError: this client's "
            "images cannot be read")  # the hook of the user's own defense, named
    assert f"every client update failed (the first: {said})" in err
    (row,) = list(csv.DictReader((out / "rounds.csv").open()))
    assert row["errors"] == "2" and row["error"] == said
    assert f"2 client errors (the first: {said.replace(chr(39), '&#x27;')})" in (out / "report.html").read_text()
