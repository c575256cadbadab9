"""A Ray cluster of several nodes on this machine (loopback), started with `ray start`.

It stands in for the distributed setup (a head for Flower's clients, attack nodes offering
the `fedattack_attack` resource, as in docker/compose.yaml) where there are no machines:
the distributed tests and the overhead benchmark use it. Each node runs in its own process
group and temp dir (so no other `ray.init()` on this machine finds it) and `stop()` kills
exactly those groups, never a machine-wide `ray stop`. `pin=` puts a node and every process
it starts on the given cores (`taskset`), so nodes do not compete for one another's cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # where `import fedattack` resolves from


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: every socket stays bound until all are chosen, so the OS
    cannot hand the same port out twice (separate calls can, once a socket is closed)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


class LocalCluster:
    """Ray nodes started by `ray start --block`, each in its own process group.

    `pythonpath`: extra import roots for the nodes' workers (plug-ins given by import path),
    before fedattack's own; `cwd`: the nodes' working directory."""

    def __init__(self, pythonpath: list[str | Path] = (), cwd: str | Path | None = None) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="fa-ray-", dir="/tmp")  # short: Unix socket paths
        # every port this cluster asks for by number, chosen at once so that none repeats
        # (a head and up to 7 more nodes)
        self.port, self._client_port, self._dashboard_port, *self._agent_ports = free_ports(3 + 8)
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
                    "RAY_USAGE_STATS_ENABLED": "0",
                    "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(PACKAGE_ROOT),
                                                   *filter(None, [os.environ.get("PYTHONPATH")])])}
        self.cwd = Path(cwd) if cwd is not None else PACKAGE_ROOT
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def _start(self, name: str, args: list[str], cpus: list[int] | None) -> None:
        log = Path(self.temp_dir) / f"{name}.log"
        pin = [shutil.which("taskset") or "taskset", "-c", ",".join(map(str, cpus))] if cpus else []
        cmd = [*pin, str(RAY), "start", *args, "--disable-usage-stats", "--object-store-memory=100000000",
               f"--dashboard-agent-listen-port={self._agent_ports[len(self.procs)]}", "--block"]
        proc = subprocess.Popen(cmd, env=self.env, cwd=self.cwd, start_new_session=True,
                                stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.procs.append((proc, log))
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)

    def start_head(self, cpus: int, resources: dict | None = None, pin: list[int] | None = None) -> None:
        """The head node, offering `cpus` CPUs (and `resources`); `pin`: cores it runs on."""
        self._start("head", ["--head", f"--port={self.port}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus}",
                             "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={self.temp_dir}",
                             f"--ray-client-server-port={self._client_port}", f"--dashboard-port={self._dashboard_port}",
                             *([f"--resources={json.dumps(resources)}"] if resources else [])], pin)

    def add_node(self, cpus: int, resources: dict | None = None, pin: list[int] | None = None) -> None:
        """A worker node joining the head."""
        self._start(f"node{len(self.procs)}", [f"--address={self.address}", "--node-ip-address=127.0.0.1",
                                               f"--num-cpus={cpus}", "--num-gpus=0",
                                               *([f"--resources={json.dumps(resources)}"] if resources else [])],
                    pin)

    def alive(self) -> bool:
        return all(p.poll() is None for p, _ in self.procs)

    def stop(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for p, _ in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p, _ in reversed(self.procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever of the group is left (raylet, workers, agents)
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
