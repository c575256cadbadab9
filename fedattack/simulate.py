"""`fedattack run`: an audited Flower simulation (run_simulation on Ray)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.serverapp import ServerApp

from fedattack.client.app import make_client_app
from fedattack.client.train import try_plugin_defenses
from fedattack.config import defense_sections_in_force
from fedattack.errors import ConfigError, FedattackError, first_line
from fedattack.experiment import Experiment, build
from fedattack.limits import check_cluster, check_machine
from fedattack.logs import quiet_logs
from fedattack.report.console import Progress, library_logs
from fedattack.report.summary import Summary
from fedattack.schema import Config
from fedattack.server.app import audit_strategy, run_rounds
from fedattack.server.audit import AuditStrategy
from fedattack.server.dispatch import ATTACK_RESOURCE, JOIN_THREAD
from fedattack.server.interrupt import RunGuard


def init_ray(cfg: Config, *, verbose: bool = False, num_cpus: int | None = None,
             join_timeout: float = 60.0) -> None:
    """Start a private local Ray instance, or join the cluster at `ray.address`.

    Local: the instance declares the `fedattack_attack` resource (capacity audit.max_concurrent)
    and, as Flower does when it starts Ray itself, passes this process's sys.path to its workers.
    Joined (`host:port`, or `auto` for Ray's own discovery, which also finds the private instance
    of another run on this machine, whose clients may hold every CPU): nothing about the cluster changes;
    clients go where the cluster has CPUs, attack jobs where it offers `fedattack_attack` (the
    dispatcher warns and falls back where it offers none). Flower's `ray.shutdown()` at the end of
    the simulation only disconnects this driver: the cluster keeps running for the next run.
    Where no Ray answers at the address within `join_timeout` seconds (Ray itself retries
    forever), that is a ConfigError.
    `num_cpus` (local only): CPUs the instance offers Flower's clients (default: all cores); attack
    jobs ask for none, so cores left out stay free for them. Ray stops idle workers beyond one per
    CPU after a second, and Flower's client actors hold one per CPU: the local instance keeps as
    many more as there are attack slots, so an attack worker that waits out a round of training
    is still there for the next round's jobs (a new one costs seconds of start and imports).
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the machine unless asked
    common = {"include_dashboard": False, "logging_level": logging.INFO if verbose else logging.ERROR,
              "log_to_driver": verbose, "configure_logging": True}
    if cfg.ray.address:
        address = cfg.ray.address
        problem = _listener_problem(address)
        if problem is None:
            problem = _join(ray, address, common, timeout=join_timeout)
            if problem is None:
                return
        raise ConfigError("ray.address", f"cannot join the Ray cluster at {address} ({problem}); start one with "
                                         "`ray start --head`, or leave ray.address unset for a local instance")
    paths = [p for p in sys.path if p] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))  # the instance's workers inherit it (cheaper
    try:  # to start than a runtime_env: about 10% of a small run's CPU time)
        idle_workers = (num_cpus or os.cpu_count() or 1) + cfg.audit.max_concurrent
        with _ray_processes_in_own_session(ray):
            ray.init(address="local", num_cpus=num_cpus, resources={ATTACK_RESOURCE: cfg.audit.max_concurrent},
                     _system_config={"num_workers_soft_limit": idle_workers}, **common)
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = before


@contextmanager
def _ray_processes_in_own_session(ray) -> Iterator[None]:
    """The local instance's processes (its GCS and raylet, and through the raylet its workers)
    start in a session of their own, not in this process's group.

    Ray starts them in the caller's process group, so a signal to that group (GNU `timeout`,
    `kill -- -PGID`, a service manager stopping the unit) reaches the raylet as well: it exits,
    and this driver's Ray core worker then ends the whole process at its next call to it with
    exit code 1 and nothing written, before the clean stop the signal asked for. In a session of
    their own they hear only what this process tells them; they still die with it (Ray's
    parent-death signal), and the run reaps them (`shutdown.reap_ray`). Where Ray's process
    launcher is not where it was (another Ray version), Ray starts them as before."""
    services = getattr(getattr(ray, "_private", None), "services", None)
    base = getattr(services, "ConsolePopen", None)
    if os.name != "posix" or not isinstance(base, type):
        yield
        return

    class SessionPopen(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("start_new_session", True)
            super().__init__(*args, **kwargs)

    services.ConsolePopen = SessionPopen
    try:
        yield
    finally:
        services.ConsolePopen = base


def _join(ray, address: str, options: dict, *, timeout: float) -> str | None:
    """Join the cluster at `address`; why that failed, or None. ray.init runs in a thread of
    its own: against a port where no Ray answers it retries without end."""
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            ray.init(address=address, **options)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported to the user below
            outcome.append(exc)

    thread = threading.Thread(target=connect, name=JOIN_THREAD, daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"no Ray cluster answered within {timeout:g} s"
    exc = outcome[0]
    if exc is None:
        return None
    if not isinstance(exc, (ConnectionError, RuntimeError, ValueError, AssertionError)):
        raise exc
    return first_line(exc) or type(exc).__name__


def _listener_problem(address: str, connect_timeout: float = 10.0, reply_timeout: float = 5.0) -> str | None:
    """Why `host:port` is no Ray cluster to join, from one connection: nothing answers there, or
    what answers is no Ray head's GCS (a GCS speaks gRPC, and answers an HTTP/2 preface with a
    SETTINGS frame). None where it may be one (silence after connecting, a closed connection:
    ray.init says more), or for `auto` and `ray://`."""
    host, sep, port = address.rpartition(":")
    if address == "auto" or "://" in address or not sep or not port.isdigit():
        return None
    try:
        conn = socket.create_connection((host.strip("[]"), int(port)), timeout=connect_timeout)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + an empty SETTINGS
    try:
        with conn:
            conn.settimeout(reply_timeout)
            conn.sendall(preface)
            first = conn.recv(9)
    except OSError:
        return None
    if len(first) < 9 or first[3] == 4:  # a frame of type 4 (SETTINGS): an HTTP/2 server, as Ray's GCS is
        return None
    what = "an HTTP server" if first.lstrip().upper().startswith((b"HTTP/", b"<!DOCTYPE", b"<HTML")) else (
        "a server that does not speak gRPC")
    return (f"{what} answers there, not a Ray head's GCS: Ray's dashboard and job API listen on 8265, the "
            "GCS to join on 6379 by default")


def prepare(cfg: Config, *, out_dir: str | Path, progress: Progress | None = None) -> tuple[Experiment, AuditStrategy]:
    """The run's experiment and audited strategy: everything that can fail on bad input (the
    data, its partitions, the model, this machine, the audit) fails here, before Ray starts or
    any file is written."""
    defense_sections_in_force(cfg, sweeping=False)
    exp = build(cfg)
    check_machine(exp)
    try_plugin_defenses(exp.initial_model, exp.train, cfg)
    with quiet_logs("flwr"):
        audit = audit_strategy(cfg, exp, out_dir=out_dir, progress=progress or Progress())
    return exp, audit


def run(cfg: Config, *, out_dir: str | Path, progress: Progress | None = None, verbose: bool = False) -> Summary:
    """Run the audited simulation described by cfg; write the run directory; return the summary.

    The server side is fedattack's own ServerApp main (fedattack.server.app), on the same
    public AuditStrategy a Flower user wraps their strategy with; the clients are fedattack's
    ClientApp built with this config (their own installation's). A signal stops the run at
    its next checkpoint with its results kept (fedattack.server.interrupt.RunGuard)."""
    from flwr.simulation import run_simulation

    progress = progress or Progress()
    exp, audit = prepare(cfg, out_dir=out_dir, progress=progress)
    with library_logs(verbose), RunGuard(progress, local_ray=not cfg.ray.address) as guard:
        guard.auditor = audit.auditor
        init_ray(cfg, verbose=verbose, num_cpus=cfg.ray.num_cpus)
        guard.ray_started()
        check_cluster(cfg)
        audit.auditor.warm_up()
        progress.header(cfg, audit.out_dir)
        server_app = ServerApp()

        @server_app.main()
        def _main(grid, context) -> None:
            with guard.server(grid) as grid:
                run_rounds(grid, context, cfg, exp, audit)

        guard.simulate(
            run_simulation,
            server_app=server_app,
            client_app=make_client_app(cfg),
            num_supernodes=cfg.fl.num_clients,
            backend_config={"client_resources": {"num_cpus": cfg.fl.client_cpus, "num_gpus": cfg.fl.client_gpus}},
            verbose_logging=verbose,
        )
    if guard.summary is None:
        raise FedattackError("run: the simulation ended before its first round (see Flower's log above)")
    return guard.summary
