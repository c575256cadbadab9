"""SecAgg+: the server sees only the aggregate, and the audit says so; a user's Message-API
strategy runs inside Flower's legacy SecAgg+ workflow through the bridge."""

from __future__ import annotations

import csv

import pytest

from fedattack import config as fconfig
from fedattack.simulate import run


@pytest.mark.slow
def test_secagg_run_attacks_only_the_aggregate(tmp_path):
    from tests.plugins import user_strategy

    user_strategy.SEEN.clear()
    cfg = fconfig.load(None, [
        "client.defenses=[secagg]", "fl.num_clients=3", "fl.clients_per_round=3", "fl.rounds=2",
        "fl.strategy=tests.plugins.user_strategy:RecordingFedAvg",
        "audit.attacks=[idlg,tests.plugins.aggregate_probe:aggregate_probe]", "idlg.iterations=3",
    ])
    out = tmp_path / "secagg"
    run(cfg, out_dir=out)
    rows = list(csv.DictReader((out / "leakage.csv").open()))
    # no per-client row can be computed: only the aggregate-scope attack ran, once per round
    assert len(rows) == 2
    for r in rows:
        assert r["client"] == "aggregate" and r["scope"] == "aggregate"
        assert r["attack"].endswith("aggregate_probe")
        assert r["status"] == "ok", r["error"]  # the probe fails unless it saw a sum over >= 2 clients
        assert int(r["num_images"]) == 3 * 4  # every participating client's 2 steps x batch 2
        assert r["defense"].startswith("secagg")
    rounds = list(csv.DictReader((out / "rounds.csv").open()))
    assert [r["scope"] for r in rounds] == ["aggregate", "aggregate"]
    assert all(int(r["replies"]) == 3 for r in rounds)
    # the user's Message-API strategy aggregated every round (SecAgg+ hands it the sum once per
    # client) and never saw the audit-only records
    assert [s["round"] for s in user_strategy.SEEN] == [1, 2]
    assert all(s["n"] == 3 and s["keys"] == ["arrays", "metrics"] for s in user_strategy.SEEN)
