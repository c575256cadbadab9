"""`fedattack sweep`: one audited run per defense value, a table, a frontier plot."""

from __future__ import annotations

import csv

import pytest

from fedattack import config as fconfig
from fedattack.cli import main
from fedattack.errors import ConfigError
from fedattack.sweep import plan


def test_plan_switches_the_defense_on_and_validates_each_value():
    cfg = fconfig.load(None, ["audit.attacks=[idlg]", "sweep.defense=gaussian", "sweep.values=[0.001,0.1]"])
    runs = plan(cfg)
    assert [c.defense("gaussian").sigma for _, c in runs] == [0.001, 0.1]
    assert all(c.client.defenses == ["gaussian"] for _, c in runs)
    bad = fconfig.load(None, ["audit.attacks=[idlg]", "sweep.defense=topk", "sweep.values=[0.5,7]"])
    with pytest.raises(ConfigError, match="topk.keep"):
        plan(bad)
    with pytest.raises(ConfigError, match="sweep.param"):
        plan(fconfig.load(None, ["audit.attacks=[idlg]", "sweep.defense=gaussian", "sweep.param=nope",
                                 "sweep.values=[1]"]))


@pytest.mark.slow
def test_sweep_writes_table_and_frontier(tmp_path):
    out = tmp_path / "sweep"
    code = main(["sweep", "audit.attacks=[idlg]", "idlg.iterations=3", "fl.num_clients=2", "fl.rounds=1",
                 "sweep.defense=topk", "sweep.values=[1.0,0.01]", "--out", str(out), "--quiet"])
    assert code == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["value"] for r in rows] == ["1.0", "0.01"]
    assert all(r["attack"] == "idlg" and 0 <= float(r["test_acc"]) <= 1 for r in rows)
    assert (out / "frontier.png").is_file()
    assert len(list((out / "runs").glob("*/leakage.csv"))) == 2
