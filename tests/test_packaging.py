"""A built wheel works like the editable install: it carries the default config and its
command runs from anywhere."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_shipped_default_config_is_the_documented_one():
    from fedattack.config import DEFAULT_CONFIG

    assert DEFAULT_CONFIG.is_relative_to(ROOT / "fedattack")  # inside the package, so a wheel has it
    assert DEFAULT_CONFIG.read_bytes() == (ROOT / "configs" / "default.yaml").read_bytes(), (
        "configs/default.yaml and fedattack/configs/default.yaml differ: edit both")


def _source_copy(dest: Path) -> Path:
    """The files git tracks (and new ones it does not ignore), without build leftovers."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


@pytest.mark.slow
def test_a_built_wheel_installs_and_runs_outside_the_source_tree(tmp_path):
    src = _source_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(wheels), str(src)], check=True, capture_output=True, timeout=600)
    (wheel,) = wheels.glob("fedattack-*.whl")
    # a throwaway venv that sees this environment's packages (nothing is downloaded)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # this environment's site-packages as plain path entries: its .pth files (the editable
    # install's import hook among them) are not run, so `fedattack` can only come from the wheel
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "outer-environment.pth").write_text("\n".join(sorted(here)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
                    "--quiet", str(wheel)], check=True, capture_output=True, timeout=600)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    away = tmp_path / "elsewhere"
    away.mkdir()

    def fedattack(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "fedattack"), *args], cwd=away, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([str(py), "-c", "import fedattack; print(fedattack.__file__)"], cwd=away, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(site), where
    res = fedattack("run", "--help")
    assert res.returncode == 0 and "--out" in res.stdout, res.stderr
    res = fedattack("list", "attacks")
    assert res.returncode == 0 and "invgrad" in res.stdout, res.stderr
    # no config file: the packaged default loads (the override is checked against it, then refused)
    res = fedattack("run", "client.lr=-1")
    assert res.returncode == 2 and res.stderr.strip() == "fedattack: error: client.lr: must be > 0, got -1.0"
    assert list(away.iterdir()) == []
