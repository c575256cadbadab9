"""Attack jobs on real Ray clusters started on this machine with `ray start`.

A "head" node holds one CPU (Flower's clients); an "attack" node holds no CPU and the
`fedattack_attack` resource, as a GPU worker of docker/compose.yaml does. The clusters are
fedattack.testing.cluster's: each in its own temp dir, stopped by killing exactly the process
groups it started, never with a machine-wide `ray stop`.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

from fedattack import config as fconfig
from fedattack.errors import ConfigError
from fedattack.server.dispatch import ATTACK_RESOURCE, RayDispatcher, feasible, task_options
from fedattack.testing.cluster import LocalCluster, free_port

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    """Head with one CPU for clients; an attack node with no CPU and two attack slots."""
    c = LocalCluster(pythonpath=[ROOT], cwd=ROOT)
    try:
        c.start_head(cpus=1)
        c.add_node(cpus=0, resources={ATTACK_RESOURCE: 2})
        yield c
    finally:
        c.stop()


def _rows(out: Path) -> list[dict]:
    with (out / "leakage.csv").open() as f:
        return list(csv.DictReader(f))


FAULTS = "tests.plugins.ray_faults"  # test plug-ins, by import path (clients and workers import them)


def _run_cfg(address: str, attacks: list[str], **sections: dict):
    """3 clients, 2 audited per round, 1 round; `sections`: plug-in name -> its parameters."""
    raw = fconfig.apply_overrides(fconfig.read_yaml(fconfig.DEFAULT_CONFIG), [
        "fl.num_clients=3", "fl.clients_per_round=2", "fl.rounds=1", "partition.alpha=1.0", "idlg.iterations=5",
        f"ray.address={address}"])
    raw["audit"]["attacks"] = attacks
    raw.update(sections)
    return fconfig.from_dict(raw)


# -- task options without a cluster ----------------------------------------------------

def _node(alive=True, **res):
    return {"Alive": alive, "Resources": res}


def test_task_options_use_the_attack_resource_where_a_node_offers_it():
    opts, notes = task_options([_node(CPU=4), _node(GPU=2, fedattack_attack=2)], gpus_per_job=1)
    assert opts == {"num_cpus": 0, "num_gpus": 1, "max_retries": 1, "resources": {ATTACK_RESOURCE: 1}}
    assert notes == []


def test_task_options_fall_back_with_a_warning_each():
    opts, notes = task_options([_node(CPU=4), _node(CPU=2), _node(alive=False, GPU=1, fedattack_attack=1)],
                               gpus_per_job=0.5)
    assert "resources" not in opts and opts["num_gpus"] == 0 and opts["num_cpus"] == 0
    assert len(notes) == 2
    assert "fedattack_attack" in notes[0] and "audit.max_concurrent" in notes[0]
    assert "audit.gpus_per_job=0.5" in notes[1] and "CPU" in notes[1]
    # one machine: nothing to place, so no note about the resource (the GPU note stays)
    opts, notes = task_options([_node(CPU=4)], gpus_per_job=0.5)
    assert "resources" not in opts and len(notes) == 1 and "audit.gpus_per_job" in notes[0]
    # GPUs only on a node without attack slots: the attack tasks could never start
    opts, notes = task_options([_node(CPU=4, GPU=1), _node(fedattack_attack=1)], gpus_per_job=1)
    assert opts["num_gpus"] == 0 and opts["resources"] == {ATTACK_RESOURCE: 1} and len(notes) == 1


def test_feasible_needs_one_alive_node_with_everything():
    opts = {"num_cpus": 0, "num_gpus": 1, "resources": {ATTACK_RESOURCE: 1}}
    assert feasible([_node(GPU=1, fedattack_attack=1)], opts)
    assert not feasible([_node(GPU=1), _node(fedattack_attack=1)], opts)
    assert not feasible([_node(alive=False, GPU=1, fedattack_attack=1)], opts)
    assert feasible([_node(CPU=1)], {"num_cpus": 0, "num_gpus": 0})


class _FakeRay:
    """Just enough of the ray module for RayDispatcher's bookkeeping: tasks never finish."""

    def __init__(self, nodes):
        self.node_list, self.launched, self.cancelled, self.puts = nodes, [], [], []

    def nodes(self):
        return self.node_list

    def is_initialized(self):
        return True

    def remote(self, fn):
        fake = self

        class Remote:
            def options(self, **opts):
                fake.opts = opts
                return self

            def remote(self, *args):
                fake.launched.append(args[0].client)
                return object()

        return Remote()

    def wait(self, refs, num_returns=1, timeout=None):
        time.sleep(min(timeout or 0, 0.01))
        return [], list(refs)

    def cancel(self, ref, force=False):
        self.cancelled.append(ref)

    def put(self, obj):
        self.puts.append(obj)
        return object()


def _fake_dispatcher(nodes, **kw):
    from types import SimpleNamespace

    from fedattack.server.jobs import AttackJob

    d = RayDispatcher(**kw, on_warning=lambda msg: None)
    d._ray = _FakeRay(nodes)
    obs = SimpleNamespace(num_clients=1)  # one update, three attacks on it
    jobs = [AttackJob(round=1, client=c, attack="idlg", params=None, observation=obs) for c in range(3)]
    return d, jobs


def test_without_attack_slots_the_dispatcher_keeps_max_concurrent_in_flight():
    d, jobs = _fake_dispatcher([_node(CPU=2)], max_concurrent=2)
    for job in jobs:
        d.submit(job, truth=None)
    assert d._ray.launched == [0, 1] and d.pending() == 3 and d.max_in_flight == 2
    assert len(d._ray.puts) == 3  # the observation, the truth and the attack's spec, once each
    d2, jobs = _fake_dispatcher([_node(CPU=2), _node(fedattack_attack=1)], max_concurrent=2)
    for job in jobs:
        d2.submit(job, truth=None)
    # with attack slots, as many in flight as the cluster has slots (a job's time limit counts from its slot)
    assert d2._ray.launched == [0] and d2.max_in_flight == 1 and d2.pending() == 3


def test_drain_fails_pending_jobs_once_no_node_can_run_them():
    d, jobs = _fake_dispatcher([_node(CPU=2), _node(fedattack_attack=1)], max_concurrent=2, stall_grace=0.2)
    for job in jobs:
        d.submit(job, truth=None)
    d._ray.node_list = [_node(CPU=2), _node(alive=False, fedattack_attack=1)]  # the attack node is gone
    results = list(d.drain())
    assert sorted(r.client for r in results) == [0, 1, 2] and d.pending() == 0
    assert all(r.status == "failed" and "no alive Ray node can run attack jobs (fedattack_attack=1)" in r.error
               for r in results)
    assert len(d._ray.cancelled) == 1  # the one in flight; the queued two were never launched


def test_unreachable_address_is_a_one_line_config_error():
    import ray

    from fedattack.simulate import init_ray

    if ray.is_initialized():
        ray.shutdown()
    cfg = fconfig.load(None, ["audit.attacks=[]", f"ray.address=127.0.0.1:{free_port()}"])
    with pytest.raises(ConfigError, match=r"^ray\.address: cannot join the Ray cluster at 127\.0\.0\.1:\d+"):
        init_ray(cfg)


def test_an_address_where_no_ray_answers_is_a_one_line_config_error_in_bounded_time(tmp_path):
    import http.server
    import subprocess
    import sys
    import threading

    from fedattack.simulate import init_ray

    # a web server (Ray's dashboard, say) is told apart from a GCS by its reply, at once
    web = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    try:
        cfg = fconfig.load(None, ["audit.attacks=[]", f"ray.address=127.0.0.1:{web.server_address[1]}"])
        with pytest.raises(ConfigError, match=r"^ray\.address: cannot join .*\(an HTTP server answers there, not a "
                                              r"Ray head's GCS: Ray's dashboard"):
            init_ray(cfg)
    finally:
        web.shutdown()
    # a listener that never answers: Ray would retry without end (its own process: the retrying
    # thread is left behind, and the command line leaves with os._exit past it, as here: the
    # interpreter finalizing beside it can abort)
    code = """
import os, socket, sys
from fedattack import config as fconfig
from fedattack.errors import ConfigError
from fedattack.server.dispatch import abandoned_threads
from fedattack.simulate import init_ray
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(4)
cfg = fconfig.load(None, ["audit.attacks=[]", f"ray.address=127.0.0.1:{srv.getsockname()[1]}"])
try:
    init_ray(cfg, join_timeout=3)
except ConfigError as exc:
    print(exc)
print("left:", [t.name for t in abandoned_threads()], flush=True)
os._exit(0)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "no Ray cluster answered within 3 s" in out.stdout, out.stderr[-2000:]
    assert "left: ['fedattack-ray-join']" in out.stdout  # what the command line's os._exit looks for


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "foo", "host:", ":6379", "ray://"])
def test_an_address_of_no_ray_form_is_refused_with_the_config(address):
    with pytest.raises(ConfigError, match=r"^ray\.address: .*allowed: auto, host:port|^ray\.address: expected auto"):
        fconfig.load(None, [f"ray.address={address}"])
    for good in ("auto", "head:6379", "10.0.0.2:6379", "ray://head:10001"):
        assert fconfig.load(None, [f"ray.address={good}"]).ray.address == good


@pytest.mark.slow
def test_the_local_instance_keeps_a_warm_attack_worker_while_clients_hold_every_cpu():
    import os

    import ray

    from fedattack.simulate import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(fconfig.load(None, ["audit.max_concurrent=1"]), num_cpus=1)
    try:
        @ray.remote(num_cpus=1)
        class Client:  # as Flower's client actor: it holds the instance's one CPU
            def ping(self) -> int:
                return os.getpid()

        client = Client.remote()
        ray.get(client.ping.remote())
        dispatcher = RayDispatcher(max_concurrent=1, on_warning=lambda msg: None)
        warm_pid = ray.get(dispatcher.warm(), timeout=120)
        time.sleep(3)  # a round of training: Ray's idle-worker reaper looks every second

        def pid() -> int:
            return os.getpid()

        assert ray.get(ray.remote(pid).options(**dispatcher.options).remote(), timeout=120) == warm_pid
        # none of the instance's processes is in this process's group: a signal to the group
        # (GNU timeout's) stops this driver cleanly instead of killing its raylet under it
        from fedattack import shutdown

        ours = [p for p in shutdown.descendants() if shutdown.is_ray_process(shutdown._cmdline(p))]
        assert ours and warm_pid in ours
        assert [p for p in ours if os.getpgid(p) == os.getpgrp()] == []
    finally:
        ray.shutdown()


# -- real clusters ---------------------------------------------------------------------

@pytest.mark.slow
def test_audited_run_on_a_joined_cluster_attacks_on_the_attack_node(cluster, tmp_path):
    import ray

    from fedattack.simulate import run

    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "run"
    where = f"{FAULTS}:where"
    run(_run_cfg(cluster.address, ["idlg", where], **{where: {"marker_dir": str(markers)}}), out_dir=out)

    rows = _rows(out)
    assert sorted((r["attack"], r["status"]) for r in rows) == [("idlg", "ok")] * 2 + [(where, "ok")] * 2, rows
    assert len({r["client"] for r in rows}) == 2
    idlg = [r for r in rows if r["attack"] == "idlg"]
    assert all(float(r["label_acc"]) >= 0.5 and float(r["psnr"]) > 0 for r in idlg)  # labels from the update
    records = [json.loads(p.read_text()) for p in markers.glob("where-*.json")]
    assert len(records) == 2
    for rec in records:  # each attack held one attack slot, on the CPU-less node that offers them
        assert rec["assigned"] == {ATTACK_RESOURCE: 1.0}
        assert rec["node_resources"].get(ATTACK_RESOURCE) == 2 and not rec["node_resources"].get("CPU")
    # Flower's ray.shutdown() disconnected this driver only: the cluster runs on
    assert not ray.is_initialized() and cluster.alive()


@pytest.mark.slow
def test_killed_workers_are_retried_once_and_cost_no_other_result(cluster, tmp_path):
    from fedattack.simulate import run

    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / "run"
    once, always = f"{FAULTS}:die_once", f"{FAULTS}:die_always"
    cfg = _run_cfg(cluster.address, [once, always, "idlg"], **{a: {"marker_dir": str(markers)} for a in (once, always)})
    cfg.audit.max_clients = 1  # one audited client: three jobs
    run(cfg, out_dir=out)

    rows = {r["attack"]: r for r in _rows(out)}
    assert sorted(rows) == sorted([once, always, "idlg"])
    assert rows[once]["status"] == "ok" and rows["idlg"]["status"] == "ok", rows
    assert rows[always]["status"] == "failed" and "WorkerCrashedError" in rows[always]["error"], rows[always]
    assert float(rows["idlg"]["label_acc"]) >= 0.5
    # die_once died on its first attempt and succeeded on the retry; die_always died twice, then counted as failed
    assert len(list(markers.glob("die_once-*"))) == 1
    assert len(list(markers.glob("die_always-*"))) == 2
    assert cluster.alive()


@pytest.mark.slow
def test_cluster_without_attack_slots_warns_and_caps_jobs_itself(tmp_path, capfd):
    import ray

    from fedattack.experiment import build
    from fedattack.server.audit import make_observation
    from fedattack.server.dispatch import make_dispatcher
    from fedattack.server.jobs import AttackJob
    from fedattack.simulate import init_ray
    from tests.plugins.ray_faults import FaultParams  # registers `where` in this process only

    c = LocalCluster(pythonpath=[ROOT], cwd=ROOT)
    try:
        c.start_head(cpus=1)
        cfg = fconfig.load(None, ["audit.attacks=[]", f"ray.address={c.address}", "audit.gpus_per_job=1",
                                  "audit.max_concurrent=1"])
        init_ray(cfg)
        exp = build(cfg)
        state = exp.initial_model().state_dict()
        names = [n for n, _ in exp.initial_model().named_parameters()]
        obs = make_observation(exp, names, state, state, {"num-examples": 2})
        truth = exp.train.truth([0, 1])
        dispatcher = make_dispatcher(gpus_per_job=cfg.audit.gpus_per_job, max_concurrent=cfg.audit.max_concurrent)
        assert isinstance(dispatcher, RayDispatcher)
        params = FaultParams(marker_dir=str(tmp_path), hold=1.0)
        for seed in range(3):
            dispatcher.submit(AttackJob(round=1, client=seed, attack="where", params=params,
                                        observation=obs, seed=seed), truth)
        err = capfd.readouterr().err
        assert "fedattack_attack" not in err  # one node: nothing to place
        assert "fedattack: warning: audit.gpus_per_job=1 but no Ray node has that many GPUs" in err
        assert dispatcher.options == {"num_cpus": 0, "num_gpus": 0, "max_retries": 1}
        assert dispatcher.pending() == 3
        results = dispatcher.drain()
        assert [r.status for r in results] == ["ok"] * 3, [r.error for r in results]
        spans = sorted((rec["started"], rec["ended"]) for rec in
                       (json.loads(p.read_text()) for p in tmp_path.glob("where-*.json")))
        assert len(spans) == 3
        assert all(prev[1] <= nxt[0] for prev, nxt in zip(spans, spans[1:]))  # one at a time
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.stop()
