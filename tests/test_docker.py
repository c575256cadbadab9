"""docker/: the GPU image and the Ray head + GPU worker compose file.

`docker compose config` validates the compose file where the docker CLI has the compose
plugin; the structure that makes the cluster work (GPU reservations, attack slots, the run
service joining the head) is checked on the parsed YAML in every case.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from fedattack.server.dispatch import ATTACK_RESOURCE

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"


def _interpolate(text: str) -> str:
    """Compose's ${VAR:-default} with no variables set."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def _argv(command) -> list[str]:
    return list(command) if isinstance(command, list) else shlex.split(command)


def _flag(argv: list[str], name: str) -> str | None:
    return next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")), None)


def _compose_cli() -> list[str] | None:
    """`docker compose` (the plugin) or the standalone `docker-compose`, where installed."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _compose_plugin() -> bool:
    return _compose_cli() is not None


def _config() -> dict:
    """The compose model: validated by `docker compose config` where a compose CLI exists, else the YAML."""
    cli = _compose_cli()
    if cli:
        env = {k: v for k, v in os.environ.items() if k not in ("HEAD_CPUS", "ATTACK_SLOTS")}
        res = subprocess.run([*cli, "-f", str(COMPOSE), "--profile", "run", "config"], capture_output=True, text=True,
                             cwd=ROOT, env=env)
        assert res.returncode == 0, res.stderr
        return yaml.safe_load(res.stdout)
    return yaml.safe_load(_interpolate(COMPOSE.read_text()))


def test_compose_has_a_ray_head_gpu_workers_and_a_run_service():
    services = _config()["services"]
    assert {"head", "gpu-worker", "fedattack"} <= set(services)

    head = _argv(services["head"]["command"])
    assert head[:3] == ["ray", "start", "--head"] and _flag(head, "port") == "6379" and "--block" in head
    assert _flag(head, "num-gpus") == "0"  # the head's CPUs hold Flower's clients; GPUs are for attacks

    worker = services["gpu-worker"]
    argv = _argv(worker["command"])
    assert argv[:2] == ["ray", "start"] and _flag(argv, "address") == "head:6379" and "--block" in argv
    assert _flag(argv, "num-cpus") == "0"  # no client lands on a GPU worker
    slots = json.loads(_flag(argv, "resources"))
    assert set(slots) == {ATTACK_RESOURCE} and int(slots[ATTACK_RESOURCE]) >= 1
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)

    run = services["fedattack"]
    argv = _argv(run["entrypoint"]) + _argv(run["command"])
    assert "docker/join.sh" in argv
    cmd = argv[argv.index("fedattack"):]
    assert cmd[:2] == ["fedattack", "run"] and "ray.address=head:6379" in cmd
    assert any(a.startswith("audit.gpus_per_job=") and float(a.split("=")[1]) > 0 for a in cmd)
    assert all((ROOT / a).is_file() for a in cmd[2:] if "=" not in a)  # the config it names exists
    for name in ("head", "gpu-worker", "fedattack"):
        build = services[name]["build"]
        context = Path(build["context"]) if _compose_plugin() else (DOCKER / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"


def test_run_command_overrides_parse_as_a_fedattack_config():
    from fedattack import config as fconfig

    run = _config()["services"]["fedattack"]
    cmd = _argv(run["command"])
    overrides = [a for a in cmd if "=" in a]
    cfg = fconfig.load(ROOT / cmd[2], [*overrides, "audit.attacks=[idlg]"])  # the attack list is the config's
    assert cfg.ray.address == "head:6379" and cfg.audit.gpus_per_job > 0


def _instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
            current = ""
    return out


def _readme_setup_commands() -> list[str]:
    """The commands of the README's set-up block (```bash after "## Set up")."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Set up", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` (relative to the build context) out, for these patterns."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, f"**/{pattern}") or
               (pattern.startswith("**/") and fnmatch.fnmatch(p.rsplit("/", 1)[-1], pattern[3:])) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerfile_builds_a_python_image_that_installs_the_package_the_readme_way():
    steps = _instructions(DOCKER / "Dockerfile")
    args = dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)
    assert ("FROM", "${BASE_IMAGE}") in steps
    # PyPI's torch wheels bring their own CUDA: a plain Python base whose version the package accepts
    base = re.fullmatch(r"python:(\d+)\.(\d+)-slim(-\w+)?", args["BASE_IMAGE"])
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert base and requires.startswith(">=") and (int(base[1]), int(base[2])) >= tuple(
        int(v) for v in requires[2:].split("."))
    env = dict(kv.split("=", 1) for k, a in steps if k == "ENV" for kv in shlex.split(a))
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")  # the toolkit mounts the CUDA driver
    major = re.fullmatch(r"cuda>=(\d+)\.\d+", env["NVIDIA_REQUIRE_CUDA"])[1]  # the driver torch's CUDA needs
    install = next(a for k, a in steps if k == "RUN" and "pip install -e" in a)
    assert f"== '{major}'" in install  # the build checks torch was built for that CUDA
    kinds = [k for k, _ in steps]
    workdir, copy = kinds.index("WORKDIR"), steps.index(("COPY", ". /app"))
    assert steps[workdir] == ("WORKDIR", "/app") and workdir < copy
    readme_install = _readme_setup_commands()[0]  # pip install -e ".[dev]"
    runs = [i for i, (k, a) in enumerate(steps) if k == "RUN" and readme_install in a]
    assert runs and runs[0] > copy, f"no RUN with the README's `{readme_install}` after COPY"
    # the image's default command is the console script the package declares, and it works
    cmd = json.loads(next(a for k, a in steps if k == "CMD"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert cmd[0] in scripts and scripts[cmd[0]] == "fedattack.__main__:entry"
    from fedattack.cli import main

    with pytest.raises(SystemExit) as info:
        main(cmd[1:])
    assert info.value.code == 0


def test_build_context_holds_what_the_install_needs_and_not_the_local_environment():
    patterns = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = ["pyproject.toml", project["readme"], "fedattack/__init__.py", "fedattack/cli.py",
              "configs/default.yaml", "docker/join.sh"]
    assert all((ROOT / p).is_file() for p in needed)
    assert [p for p in needed if _dockerignored(p, patterns)] == []
    for local in (".venv/bin/python", ".git/HEAD", "runs/20260101-000000/leakage.csv", "fedattack/__pycache__/x.pyc",
                  "fedattack.egg-info/PKG-INFO", "build/lib/fedattack/cli.py"):
        assert _dockerignored(local, patterns), local


def _join(tmp_path: Path, command: list[str], ray_exit: int = 0, **env: str) -> tuple[int, list[str]]:
    """Run docker/join.sh with a stand-in `ray` that logs its calls; returns (exit code, calls)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir(exist_ok=True)
    log.write_text("")
    ray = bin_dir / "ray"
    ray.write_text(f'#!/bin/sh\necho "ray $*" >> "{log}"\n[ "$1" = start ] && exit {ray_exit}\nexit 0\n')
    ray.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k != "RAY_HEAD"}
    res = subprocess.run(["sh", str(DOCKER / "join.sh"), *command], capture_output=True, text=True, timeout=60,
                         env={**base, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CALLS": str(log), **env})
    return res.returncode, log.read_text().splitlines()


def test_join_script_joins_the_head_runs_the_command_and_leaves(tmp_path):
    command = ["sh", "-c", 'echo "command $0" >> "$CALLS"; exit 3', "fedattack"]
    code, calls = _join(tmp_path, command)
    assert calls == ["ray start --address=head:6379 --num-cpus=0 --num-gpus=0 --disable-usage-stats",
                     "command fedattack", "ray stop"]
    assert code == 3  # the command's own exit code
    _, calls = _join(tmp_path, ["true"], RAY_HEAD="10.0.0.5:6380")
    assert calls[0].startswith("ray start --address=10.0.0.5:6380 ") and calls[-1] == "ray stop"
    code, calls = _join(tmp_path, command, ray_exit=1)  # no cluster to join: the command never runs
    assert code != 0 and not any(c.startswith("command") for c in calls)


def test_join_script_passes_a_stop_on_to_the_command_and_keeps_its_exit_code(tmp_path):
    """`docker stop` sends SIGTERM to the container's first process, the script: the command
    must receive it (fedattack then stops cleanly, exit 143), and the cluster is left."""
    import signal
    import time

    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "ray").write_text(f'#!/bin/sh\necho "ray $*" >> "{log}"\nexit 0\n')
    (bin_dir / "ray").chmod(0o755)
    command = ["sh", "-c", f'trap \'echo "command stopped" >> "{log}"; exit 143\' TERM; '
               f'echo "command started" >> "{log}"; i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done']
    proc = subprocess.Popen(["sh", str(DOCKER / "join.sh"), *command],
                            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    deadline = time.monotonic() + 20
    while "command started" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 143
    assert log.read_text().splitlines()[1:] == ["command started", "command stopped", "ray stop"]


def test_the_run_service_joins_the_head_it_names():
    services = _config()["services"]
    run = services["fedattack"]
    address = next(a.split("=", 1)[1] for a in _argv(run["command"]) if a.startswith("ray.address="))
    assert run["environment"]["RAY_HEAD"] == address  # join.sh joins the cluster the run drives
    host, port = address.split(":")
    assert host in services and _flag(_argv(services[host]["command"]), "port") == port


def test_join_script_passes_an_early_ctrl_c_on_to_the_command(tmp_path):
    """sh starts a background command with SIGINT ignored: a Ctrl-C that comes before the command
    installs its own handlers (fedattack's first seconds: imports, Ray) must still reach it."""
    import signal
    import sys
    import time

    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "ray").write_text(f'#!/bin/sh\necho "ray $*" >> "{log}"\nexit 0\n')
    (bin_dir / "ray").chmod(0o755)
    command = [sys.executable, "-c", "import sys, time\nlog = open(sys.argv[1], 'a', buffering=1)\n"
               "log.write('command started\\n')\ntry:\n    time.sleep(10)\nexcept KeyboardInterrupt:\n"
               "    log.write('command interrupted\\n')\n    sys.exit(130)\n", str(log)]
    proc = subprocess.Popen(["sh", str(DOCKER / "join.sh"), *command],
                            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    deadline = time.monotonic() + 20
    while "command started" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130
    assert log.read_text().splitlines()[1:] == ["command started", "command interrupted", "ray stop"]


STATUS = """======== Autoscaler status ========
Node status
---------------------------------------------------------------
Active:
 1 node_0f3a
{more}Pending:
 (no pending nodes)

Resources
---------------------------------------------------------------
Total Usage:
 0.0/8.0 CPU
{gpu} 0B/20.00GiB memory
 0B/8.00GiB object_store_memory
"""


def test_the_run_waits_until_a_gpu_worker_has_joined(tmp_path):
    """Attack jobs' placement is settled when the run submits them: the run service starts only
    once the worker's GPUs are in the cluster (its healthcheck), not as soon as its container runs."""
    services = _config()["services"]
    assert services["fedattack"]["depends_on"]["gpu-worker"]["condition"] == "service_healthy"
    kind, check = services["gpu-worker"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and "ray status --address=head:6379" in check
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    status = tmp_path / "status.txt"
    (bin_dir / "ray").write_text(f'#!/bin/sh\n[ "$1" = status ] || exit 2\ncat "{status}"\n')
    (bin_dir / "ray").chmod(0o755)

    def healthy(text: str) -> bool:
        status.write_text(text)
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        return subprocess.run(["sh", "-c", check], env=env, timeout=30).returncode == 0

    assert healthy(STATUS.format(more=" 1 node_77c1\n", gpu=" 0.0/2.0 GPU\n 0.0/2.0 fedattack_attack\n"))
    assert healthy(STATUS.format(more=" 1 node_77c1\n", gpu=" 1.0/1.0 GPU\n 1.0/2.0 fedattack_attack\n"))
    assert not healthy(STATUS.format(more="", gpu=""))  # the head alone: no GPU yet
    assert not healthy(STATUS.format(more=" 1 node_77c1\n", gpu=" 0.0/2.0 fedattack_attack\n"))  # no GPU seen
    assert not healthy("")  # no cluster to ask
