"""Running a Flower App directory in this process, as `flwr run` runs it, and `flwr run` itself.

`run_app` loads the app's pyproject.toml (`[tool.flwr.app.components]`, the run config of
`[tool.flwr.app.config]` with overrides) and runs its ServerApp and ClientApp in Flower's
simulation engine, exactly as Flower's simulation runtime (`flwr-simulation`, what `flwr run`
starts on a local SuperLink) does: through `flwr.simulation.run_simulation._run_simulation`
with the app directory, so both apps see the fused run config (the public `run_simulation`
gives them an empty one). Flower 1.42 has no public function for this; the private one is
used here only, for tests and benchmarks.

`FlowerHome` is a private `FLWR_HOME` with its own ports for `flwr run`, and stops exactly the
processes started under it (a local SuperLink stays running after `flwr run` returns).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fedattack.testing.cluster import free_ports


def run_app(app_dir: str | Path, *, num_supernodes: int, run_config: dict[str, Any] | None = None,
            backend_config: dict[str, Any] | None = None, verbose: bool = False) -> None:
    """Run the Flower App in `app_dir` in Flower's simulation engine (Ray), in this process."""
    from flwr.app import Context, RecordDict
    from flwr.common.config import get_fused_config_from_dir, get_project_config
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    app_dir = Path(app_dir).resolve()
    components = get_project_config(app_dir)["tool"]["flwr"]["app"]["components"]
    # this app's packages, not another copy imported earlier in this process
    packages = {str(v).split(":")[0].split(".")[0] for v in components.values()}
    for name in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[name]
    sys.path[:] = [str(app_dir), *(p for p in sys.path if p != str(app_dir))]
    run = Run.create_empty(run_id=int.from_bytes(os.urandom(7), "big"))
    run.override_config = dict(run_config or {})
    run.primary_task_id = int.from_bytes(os.urandom(7), "big")
    run.federation_id = NOOP_FEDERATION_ID
    # the identity messages are created under (Flower's simulation runtime sets the same)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=get_fused_config_from_dir(app_dir, run.override_config))
    try:  # the ServerApp's exception, if any, is raised here
        _run_simulation(num_supernodes=num_supernodes, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                        server_app_attr=components["serverapp"], client_app_attr=components["clientapp"],
                        backend_config=backend_config or {}, app_dir=str(app_dir), run=run,
                        server_app_context=context, is_app=True, verbose_logging=verbose)
    finally:
        import ray

        if ray.is_initialized():  # the next run's workers import that run's app
            ray.shutdown()


class FlowerHome:
    """A private FLWR_HOME and ports for `flwr run` with a local SuperLink; `stop()` ends the
    processes started under it (found by their FLWR_HOME), nothing else."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        http_port, control_port = free_ports(2)
        self.env = {**os.environ, "FLWR_HOME": str(self.root), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                    "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
                    "FLWR_LOCAL_CONTROL_API_PORT": str(control_port), "RAY_USAGE_STATS_ENABLED": "0",
                    # `flwr run` starts `flower-superlink` from PATH: this environment's
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}

    def flwr(self, *args: str, cwd: str | Path | None = None, timeout: float = 900,
             pythonpath: list[str | Path] = ()) -> subprocess.CompletedProcess:
        env = dict(self.env)
        env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), *filter(None, [env.get("PYTHONPATH", "")])])
        flwr = Path(sys.executable).parent / "flwr"
        return subprocess.run([str(flwr), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)

    def pids(self) -> list[int]:
        """Processes of this user whose environment has this FLWR_HOME."""
        mine = f"FLWR_HOME={self.root}".encode()
        out = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit() or int(p.name) == os.getpid():
                continue
            try:
                if mine in (p / "environ").read_bytes().split(b"\0"):
                    out.append(int(p.name))
            except OSError:
                continue
        return out

    def stop(self, grace: float = 5.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self.pids():
                return
