"""SecAgg+: the server sees only the aggregate, and the audit says so; a user's Message-API
strategy runs inside Flower's legacy SecAgg+ workflow through the bridge."""

from __future__ import annotations

import csv

import pytest

from fedattack import config as fconfig
from fedattack.simulate import run


@pytest.mark.slow
def test_secagg_run_attacks_only_the_aggregate(tmp_path, monkeypatch):
    from fedattack.server import app as server_app
    from tests.plugins import user_strategy

    returned = []

    def start(*args, **kwargs):
        returned.append(start_secagg(*args, **kwargs))
        return returned[-1]

    start_secagg = server_app.start_secagg
    monkeypatch.setattr(server_app, "start_secagg", start)
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
    assert "the private images of every client in the round's sum (top)" in (out / "report.html").read_text()
    rounds = list(csv.DictReader((out / "rounds.csv").open()))
    assert [r["scope"] for r in rounds] == ["aggregate", "aggregate"]
    assert all(int(r["replies"]) == 3 and int(r["audited_clients"]) == 3 for r in rounds)
    # the user's Message-API strategy aggregated every round (SecAgg+ hands it the sum once per
    # client) and never saw the audit-only records
    assert [s["round"] for s in user_strategy.SEEN] == [1, 2]
    assert all(s["n"] == 3 and s["keys"] == ["arrays", "metrics"] for s in user_strategy.SEEN)
    # start_secagg returns what strategy.start returns: the final global arrays, each round's metrics
    (result,) = returned
    assert sorted(result.evaluate_metrics_serverapp) == [1, 2]  # fedattack evaluates after each round
    assert sorted(result.train_metrics_clientapp) == [1, 2]
    assert len(result.arrays) and all(a.numpy().size for a in result.arrays.values())


@pytest.mark.parametrize("partitions_known", [True, False])  # False: a user's app, whose store has no partitions
def test_images_recovered_from_the_sum_are_credited_to_their_own_samples_and_clients(tmp_path, flower_task,
                                                                                    partitions_known):
    import json

    import numpy as np
    import torch
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

    from fedattack.client.record import AUDIT_KEY, TRUTH_KEY
    from fedattack.experiment import build
    from fedattack.server.audit import Auditor, experiment_plan
    from fedattack.server.dispatch import LocalDispatcher

    cfg = fconfig.load(None, ["client.defenses=[secagg]", "model.name=mlp", "fl.num_clients=4",
                              "fl.clients_per_round=3", "fl.rounds=1", "client.batch_size=2", "client.local_steps=1",
                              "audit.attacks=[tests.plugins.aggregate_probe:aggregate_probe]"])
    exp = build(cfg)
    auditor = Auditor(experiment_plan(exp), out_dir=tmp_path / "run", dispatcher=LocalDispatcher(1),
                      on_result=lambda r: None, on_round=lambda *a: None)
    if not partitions_known:
        auditor.store_args["partitions"] = {}
    weights = exp.initial_model().state_dict()
    # the replies arrive in no particular order; each client trained on two of its own samples
    trained = {3: [int(i) for i in exp.partitions[3][-2:]], 1: [int(i) for i in exp.partitions[1][:2]]}
    sent, replies = {}, []
    for node, (client, indices) in enumerate(trained.items(), start=10):
        sent[node] = Message(RecordDict({"arrays": ArrayRecord(weights), "config": ConfigRecord({})}),
                             dst_node_id=node, message_type="train")
        x, y = exp.train.get(np.asarray(indices))
        replies.append(Message(RecordDict({
            "arrays": ArrayRecord({k: v + 0.01 for k, v in weights.items()}),
            "metrics": MetricRecord({"num-examples": 2}),
            AUDIT_KEY: ConfigRecord({"client": client, "samples": 2, "note": ""}),
            TRUTH_KEY: ArrayRecord({"images": Array(torch.as_tensor(x).numpy()), "labels": Array(np.asarray(y)),
                                    "indices": Array(np.asarray(indices))}),
        }), reply_to=sent[node]))
    with auditor.session(scope="aggregate"):
        auditor.begin_round(1, scope="aggregate")
        # they arrive in the reverse order: the sum's truth keeps the order they were sent in
        auditor.observe(1, sent, replies[::-1], arrays_key="arrays", config_key="config", weight_key="num-examples",
                        aggregate=True)
        auditor.end_round(1)
    run = tmp_path / "run"
    rows = list(csv.DictReader((run / "images.csv").open()))
    assert [(int(r["index"]), int(r["owner"])) for r in rows] == [(i, c) for c, ii in trained.items() for i in ii]
    assert all(r["client"] == "aggregate" for r in rows)
    assert sorted(p.name for p in (run / "images" / "best").iterdir()) == sorted(f"{i}.png" for ii in trained.values()
                                                                                 for i in ii)
    if not partitions_known:
        return
    exposed = {r["client"]: int(r["audited"]) for r in csv.DictReader((run / "exposure.csv").open())}
    assert exposed == {"0": 0, "1": 2, "2": 0, "3": 2, "all": 4}
    assert json.loads((run / "summary.json").read_text())["headline"]["audited_samples"] == 4


def test_the_audit_says_once_at_the_start_which_attacks_cannot_run_on_the_sum():
    from fedattack.experiment import build
    from fedattack.server.audit import Auditor, experiment_plan

    def notes(attacks: str, scope: str) -> list[str]:
        cfg = fconfig.load(None, ["client.defenses=[secagg]", "model.name=mlp", f"audit.attacks={attacks}"])
        auditor = Auditor(experiment_plan(build(cfg)), out_dir=None)
        said: list[str] = []
        auditor.on_note = said.append
        with auditor.session(scope=scope):
            pass
        return said

    (note,) = notes("[idlg,invgrad]", "aggregate")
    assert note.startswith("Under SecAgg+ the server sees each round's sum of updates, never one client's: idlg, "
                           "invgrad do not run (each needs one client's update); no configured attack runs on the "
                           "sum (add ")
    assert "cpa" in note and note.endswith(  # and any attack on sums registered here
        " to audit.attacks; cpa needs a fully connected layer on the flattened input, as the built-in mlp has).")
    assert notes("[cpa,invgrad]", "aggregate") == [
        "Under SecAgg+ the server sees each round's sum of updates, never one client's: invgrad does not run "
        "(it needs one client's update); cpa attacks the sum."]
    assert notes("[cpa]", "aggregate") == [] and notes("[idlg,invgrad]", "client") == []


def test_a_secagg_reply_is_weighed_by_the_strategys_own_example_count_metric():
    """The example count SecAgg+ weighs a reply by is the metric the strategy names
    (weighted_by_key), not always 'num-examples'; a reply without it is an error, as Flower's
    FedAvg makes it without SecAgg+ (it was weighed as 1 example, silently)."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.compat.common import recorddict_compat as compat

    from fedattack.client.secagg import as_fitres

    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))}),
                          "metrics": MetricRecord({"n-ex": 31, "train_loss": 0.5})})
    fitres = compat.recorddict_to_fitres(as_fitres(content, "n-ex"), keep_input=False)
    assert fitres.num_examples == 31
    with pytest.raises(ValueError, match=r"lack 'num-examples'.*weighted_by_key.*\['n-ex', 'train_loss'\]"):
        as_fitres(content)


def test_flowers_robust_aggregators_are_named_where_secagg_leaves_them_nothing_to_compare():
    from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, MultiKrum

    from fedattack.server.secagg import robust_aggregator

    assert robust_aggregator(FedMedian()) == "FedMedian"
    assert robust_aggregator(MultiKrum()) == "MultiKrum"
    assert robust_aggregator(FedAvg()) == robust_aggregator(FedProx()) == ""


def test_a_secagg_run_repeats_under_its_seed(tmp_path):
    """SecAgg+'s quantization rounds each update stochastically with NumPy's global generator:
    unseeded, two runs of one config trained different models."""
    cfg = fconfig.load(None, ["client.defenses=[secagg]", "fl.num_clients=2", "fl.clients_per_round=2",
                              "fl.rounds=1", "audit.attacks=[]"])
    losses = []
    for name in ("a", "b"):
        run(cfg, out_dir=tmp_path / name)
        (row,) = csv.DictReader((tmp_path / name / "rounds.csv").open())
        losses.append((row["train_loss"], row["test_loss"], row["test_acc"]))
    assert losses[0] == losses[1] and losses[0][1] not in ("", None)
