"""What auditing costs training: round wall time with the audit on vs off.

The same tiny simulation runs twice per setting, with `audit.attacks=[]` and with the default
attacks. A round's time is rounds.csv's `seconds` (from the server starting the round to its
evaluation); attack jobs run on past their round, so each run's wall time, final drain
included, is reported beside it. Round 1 also pays for the client processes' start-up, so the
ratio is taken between the medians of the later rounds. `audit_ms_per_round` is the audit's own
work inside a round (Auditor.observe: building observations and queueing their jobs; the
audit's background thread hands them to Ray and collects results);
`ratio_without_contention` is the round ratio if that were the only cost, as with attack workers
on their own machines.

Settings:
  shared    Ray offers every core to Flower's clients; attack jobs (num_cpus=0) compete with
            them and with the server for the same cores.
  reserved  Ray offers Flower's clients all cores but audit.max_concurrent x
            audit.threads_per_job; those are the attack workers' own. With a GPU, attack
            jobs also take audit.gpus_per_job=1 (on this machine's GPU). Nothing stops the
            operating system from running the attack on the clients' cores, though.
  cluster   "attack workers are free", as deployed: a two-node Ray cluster on loopback
            (fedattack.testing.cluster), `fedattack run` joining it with `ray.address`. The head
            (server, Flower's clients) is pinned to all cores but the last, the attack node
            (no CPU for clients, the `fedattack_attack` resource) to the last core, as an
            attack machine of docker/compose.yaml would be a machine of its own.
"""

from __future__ import annotations

import csv
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

TINY = ["fl.num_clients=4", "fl.clients_per_round=2", "partition.alpha=1.0", "audit.max_concurrent=1",
        "audit.threads_per_job=1", "fl.client_cpus=1"]


def _default_attacks() -> list[str]:
    from fedattack import config as fconfig
    from fedattack.attacks import ATTACKS

    listed = (fconfig.read_yaml(fconfig.DEFAULT_CONFIG).get("audit") or {}).get("attacks") or []
    return [a for a in listed if a in ATTACKS.names()]


def _has_iterations(name: str) -> bool:
    import dataclasses

    from fedattack.attacks import ATTACKS

    params = ATTACKS.get(name).params
    return dataclasses.is_dataclass(params) and "iterations" in {f.name for f in dataclasses.fields(params)}


@contextmanager
def _timed_observe(spent: list[float]):
    """Time the audit's own work inside each round (Auditor.observe: observations, queued jobs)."""
    from fedattack.server.audit import Auditor

    original = Auditor.observe

    def observe(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent.append(time.perf_counter() - t0)

    Auditor.observe = observe
    try:
        yield
    finally:
        Auditor.observe = original


def _one_run(overrides: list[str], num_cpus: int | None = None) -> dict:
    from fedattack import config as fconfig
    from fedattack.report.console import Progress
    from fedattack.simulate import init_ray, run

    cfg = fconfig.load(None, overrides)
    spent: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fa-bench-") as d, _timed_observe(spent):
        out = Path(d) / "run"
        t0 = time.perf_counter()
        init_ray(cfg, num_cpus=num_cpus)
        run(cfg, out_dir=out, progress=Progress(quiet=True))
        wall = time.perf_counter() - t0
        with (out / "rounds.csv").open() as f:
            rounds = [float(r["seconds"]) for r in csv.DictReader(f)]
        with (out / "leakage.csv").open() as f:
            jobs = list(csv.DictReader(f))
    later = rounds[1:] or rounds
    return {"round_s": statistics.median(later), "round1_s": rounds[0], "wall_s": wall, "jobs": len(jobs),
            "observe_s": statistics.median(spent[1:] or spent) if spent else 0.0,
            "failed": sum(r["status"] != "ok" for r in jobs),
            "job_s": statistics.mean(float(r["seconds"]) for r in jobs) if jobs else float("nan")}


def run(quick: bool) -> list[dict]:
    import torch

    attacks = _default_attacks()
    rounds = 3 if quick else 6
    iters = [f"{a}.iterations=30" for a in attacks if quick and _has_iterations(a)]
    cores = os.cpu_count() or 1
    gpu = torch.cuda.is_available()
    base = [*TINY, f"fl.rounds={rounds}"]
    rows = []
    settings = {"shared": (None, []),
                "reserved": (max(1, cores - 1), ["audit.gpus_per_job=1"] if gpu else [])}
    audit_off, audit_on = [*base, "audit.attacks=[]"], [*base, f"audit.attacks=[{','.join(attacks)}]", *iters]
    for name, (num_cpus, extra) in settings.items():
        off = _one_run(audit_off, num_cpus)
        on = _one_run([*audit_on, *extra], num_cpus)
        rows.append(_row(name, cores, num_cpus or cores, gpu, attacks, rounds, off, on))
    if cores >= 2:
        off, on = _on_cluster(cores, audit_off, audit_on)
        rows.append(_row("cluster", cores, cores - 1, False, attacks, rounds, off, on))
    return rows


def _on_cluster(cores: int, off_overrides: list[str], on_overrides: list[str]) -> tuple[dict, dict]:
    """(off, on) runs on a loopback head + attack node, each pinned to its own cores."""
    from fedattack.server.dispatch import ATTACK_RESOURCE
    from fedattack.testing.cluster import LocalCluster

    head_cores, attack_cores = list(range(cores - 1)), [cores - 1]
    before = os.sched_getaffinity(0)
    cluster = LocalCluster()
    try:
        cluster.start_head(cpus=len(head_cores), pin=head_cores)
        cluster.add_node(cpus=0, resources={ATTACK_RESOURCE: 1}, pin=attack_cores)
        os.sched_setaffinity(0, head_cores)  # the server runs in this process
        joined = [f"ray.address={cluster.address}"]
        return _one_run([*off_overrides, *joined]), _one_run([*on_overrides, *joined])
    finally:
        os.sched_setaffinity(0, before)
        cluster.stop()


def _row(name: str, cores: int, client_cpus: int, gpu: bool, attacks: list[str], rounds: int, off: dict,
         on: dict) -> dict:
    return {"setting": name, "cores": cores, "client_cpus": client_cpus, "gpu": gpu,
            "attacks": "+".join(attacks), "rounds": rounds,
            "round_off_s": off["round_s"], "round_on_s": on["round_s"],
            "round_ratio": on["round_s"] / off["round_s"],
            "audit_ms_per_round": 1000 * on["observe_s"],
            "ratio_without_contention": (off["round_s"] + on["observe_s"]) / off["round_s"],
            "wall_off_s": off["wall_s"], "wall_on_s": on["wall_s"], "jobs": on["jobs"],
            "failed": on["failed"], "s_per_job": on["job_s"]}
