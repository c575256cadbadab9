"""docker/: the GPU image and the Ray head + GPU worker compose file.

`docker compose config` validates the compose file where the docker CLI has the compose
plugin; the structure that makes the cluster work (GPU reservations, attack slots, the run
service joining the head) is checked on the parsed YAML in every case.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

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
        res = subprocess.run([*cli, "-f", str(COMPOSE), "--profile", "run", "config"], capture_output=True, text=True,
                             cwd=ROOT, env={k: v for k, v in os.environ.items() if k not in ("HEAD_CPUS", "ATTACK_SLOTS")})
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


def test_dockerfile_is_a_cuda_image_that_installs_the_package_the_readme_way():
    text = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", text)
    assert base and base.group(1).startswith("nvidia/cuda:") and "FROM ${BASE_IMAGE}" in text
    assert re.search(r"pip install (-e \"\.\[dev\]\"|\.)", text)
    assert "COPY . /app" in text and "WORKDIR /app" in text
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_join_script_is_valid_shell_that_joins_then_runs_the_command():
    script = DOCKER / "join.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "ray start --address=" in text and "--num-cpus=0" in text and '"$@"' in text
