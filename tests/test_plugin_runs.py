"""Whole runs of the plug-in API: Flower's quickstart-pytorch app audited (in Flower's
simulation engine and through `flwr run`), the same app without its ground-truth lines, and a
server-side plug-in that clients never import."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedattack.testing.flower import FlowerHome, run_app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "quickstart-pytorch"
TINY = {"audit-iterations": 2, "local-epochs": 1}
BACKEND = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": 2}}


def _rows(run_dir: Path, name: str = "leakage.csv") -> list[dict]:
    return list(csv.DictReader((run_dir / name).open()))


def _app_images(partition_id: int, num_partitions: int) -> np.ndarray:
    """The pixels (uint8, HWC) of the images client `partition_id` of the example trains on."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        from pytorchexample import task

        task.partitioner = None
        loader, _ = task.load_data(partition_id, num_partitions, 32)
        x = np.concatenate([b["img"].numpy() for b in loader])
    finally:
        sys.path.remove(str(EXAMPLE))
    return np.round((x * 0.5 + 0.5).clip(0, 1) * 255).transpose(0, 2, 3, 1).astype(np.uint8)


def _gallery_truth(png: Path, n: int, side: int = 32) -> list[np.ndarray]:
    """The top row of a gallery (pad 1, scale 2): the private images the job was scored against."""
    g = np.asarray(Image.open(png))
    return [g[2:2 + 2 * side:2, 2 + 2 * j * (side + 1):2 + 2 * j * (side + 1) + 2 * side:2] for j in range(n)]


@pytest.mark.slow
def test_example_app_every_sampled_client_of_every_round_is_scored_against_its_own_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the app saves final_model.pt where it runs
    out = tmp_path / "audit"
    run_app(EXAMPLE, num_supernodes=4, backend_config=BACKEND,
            run_config={**TINY, "num-server-rounds": 2, "audit-out": str(out)})
    rounds, rows = _rows(out, "rounds.csv"), _rows(out)
    assert [int(r["round"]) for r in rounds] == [1, 2]
    for r in rounds:
        sampled = [x for x in rows if x["round"] == r["round"]]
        assert int(r["replies"]) == 2 and int(r["audited_clients"]) == 2 and int(r["errors"]) == 0
        assert sorted(x["attack"] for x in sampled) == ["idlg", "idlg", "invgrad", "invgrad"]
        assert len({x["client"] for x in sampled}) == 2  # every sampled client, each by every attack
    for x in rows:
        assert x["status"] == "ok" and x["unscored"] == "", x
        assert x["psnr"] != "" and x["label_acc"] != ""
        own = _app_images(int(x["client"]), 4)
        assert int(x["num_images"]) == len(own)  # one local epoch over the client's own training split
        shown = _gallery_truth(out / "images" / f"r{int(x['round']):03d}_c{x['client']}_{x['attack']}.png",
                               min(16, len(own)))
        for img in shown:  # each image it was scored against is one of the app's own
            assert min(np.abs(img.astype(int) - o.astype(int)).max() for o in own) <= 1
    assert (out / "report.html").is_file() and (tmp_path / "final_model.pt").is_file()


@pytest.mark.slow
def test_example_app_without_its_ground_truth_lines_runs_unscored_and_says_why(tmp_path, monkeypatch):
    app = tmp_path / "app"
    shutil.copytree(EXAMPLE, app, ignore=shutil.ignore_patterns("__pycache__"))
    client = app / "pytorchexample" / "client_app.py"
    lines = client.read_text().splitlines()
    kept = [line.replace("@app.train(mods=[audit_mod])", "@app.train()") if "@app.train" in line else line
            for line in lines if "# fedattack:" not in line or "@app.train" in line]
    client.write_text("\n".join(kept) + "\n")
    assert "fedattack" not in client.read_text().replace("@app.train()  # fedattack", "")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "audit"
    run_app(app, num_supernodes=2, backend_config=BACKEND, run_config={**TINY, "num-server-rounds": 1,
                                                                        "audit-out": str(out)})
    rows = _rows(out)
    assert len(rows) == 2 * 2
    for x in rows:
        assert x["status"] == "ok" and x["psnr"] == "" and x["label_acc"] == ""
        assert x["unscored"].startswith("the client sent no audit record")
        rec = np.load(out / "reconstructions" / f"r001_c{x['client']}_{x['attack']}.npz")
        assert rec["images"].shape[1:] == (3, 32, 32) and len(rec["labels"]) == len(rec["images"])
        assert x["num_images"] == str(len(rec["images"]))  # what the attack reconstructed, unscored
        assert (out / "images" / f"r001_c{x['client']}_{x['attack']}.png").is_file()
    assert "Scores unavailable" in (out / "report.html").read_text()
    assert json.loads((out / "summary.json").read_text())["attacks"]["invgrad"]["psnr"] is None


@pytest.mark.slow
def test_flwr_run_runs_the_example_offline_and_writes_the_run_directory(tmp_path):
    home = FlowerHome(tmp_path / "flwr-home")
    out = tmp_path / "audit"
    try:
        res = home.flwr("run", str(EXAMPLE), "--stream", "--run-config",
                        f'num-server-rounds=1 audit-iterations=2 audit-out="{out}"', cwd=tmp_path,
                        pythonpath=[ROOT])
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        assert "Starting local SuperLink" in res.stdout
    finally:
        home.stop()
    assert home.pids() == []  # the SuperLink and what it started are gone
    rows = _rows(out)
    assert rows and all(x["status"] == "ok" and x["unscored"] == "" for x in rows)
    assert (out / "report.html").is_file()
    assert "[tool.flwr.federations]" not in (EXAMPLE / "pyproject.toml").read_text()  # nothing to migrate


@pytest.mark.slow
def test_clients_never_import_a_server_side_plug_in(tmp_path, monkeypatch):
    from fedattack import config as fconfig
    from fedattack.simulate import run

    sys.modules.pop("tests.plugins.marker", None)  # imported below, with the marker directory set
    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv("FEDATTACK_TEST_IMPORT_MARKERS", str(markers))
    cfg = fconfig.load(None, ["fl.num_clients=2", "fl.clients_per_round=2", "fl.rounds=1", "partition.alpha=1.0",
                              "audit.attacks=[tests.plugins.marker:quick]", "audit.max_concurrent=1"])
    run(cfg, out_dir=tmp_path / "run")
    rows = _rows(tmp_path / "run")
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    seen = [json.loads(p.read_text()) for p in markers.iterdir()]
    assert {"pid": os.getpid(), "actor": None} in seen  # the server imported it
    assert [s for s in seen if s["actor"] is not None] == []  # no client actor did


@pytest.mark.slow
def test_a_reply_without_the_arrays_key_stops_fedattack_run_with_one_line_and_nothing_written(tmp_path, capsys):
    from fedattack.cli import main

    out = tmp_path / "run"
    code = main(["run", "fl.strategy=tests.plugins.user_strategy:MislabelledKeys", "fl.num_clients=2",
                 "fl.clients_per_round=2", "fl.rounds=1", "audit.attacks=[idlg]", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("fedattack: error: arrayrecord_key: a train reply (node ") and "'arrays'" in err[-1]
    assert not any("Traceback" in line for line in err)
    assert not out.exists()
