"""SIGINT and SIGTERM stop `fedattack run` cleanly at any moment: exit 130 or 143, every
finished result kept on disk, the report written, no Ray process of the run left behind.

Each case runs the real command (a private local Ray instance, one client actor) in its own
session, waits for a moment (round 1, waiting for attack jobs, writing the report), sends the
signal and checks the exit code, the rows, summary.json and that no process is left: none in the
run's session, none of those below it at the signal (Ray's start in sessions of their own). The six runs
go three at a time. SIGTERM while waiting for jobs comes as GNU `timeout` sends it: to the
command, then at once to its whole process group (one stop, not a second signal that kills).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TIMING = "tests.plugins.timing"
SMALL = ["fl.num_clients=2", "fl.clients_per_round=2", "ray.num_cpus=1", "audit.max_concurrent=2"]

# moment -> (command prefix, overrides, what marks the moment)
MOMENTS = {
    "round 1": (["-m", "fedattack"], ["fl.rounds=1", f"audit.attacks=[{TIMING}:quick]"], "run directory"),
    "waiting for jobs": (["-m", "fedattack"], ["fl.rounds=1", f"audit.attacks=[{TIMING}:quick,{TIMING}:slow]"],
                         "waiting for"),
    "the report": (["-m", "tests.plugins.slow_report"], ["fl.rounds=1", f"audit.attacks=[{TIMING}:quick]"],
                   "report-start"),
}
CASES = [(m, s) for m in MOMENTS for s in (signal.SIGINT, signal.SIGTERM)]


def _rows(out: Path) -> int:
    path = out / "leakage.csv"
    return len(list(csv.DictReader(path.open()))) if path.is_file() else 0


def _session(sid: int) -> list[str]:
    """Processes still alive in session `sid` (the run and everything it started)."""
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            left.append(f"{entry.name} {cmd[:80]}")
    return left


def _started(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19]
    except OSError:
        return None


def _tree(pid: int) -> dict[int, str]:
    """The processes below `pid` (Ray's among them, in sessions of their own), with their start
    times, so that a pid the system reuses later is not taken for one of them."""
    from fedattack.shutdown import descendants

    return {p: t for p in descendants(pid) if (t := _started(p)) is not None}


def _alive(tree: dict[int, str]) -> list[str]:
    left = []
    for p, t in tree.items():
        try:
            state = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z" and _started(p) == t:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")
            left.append(f"{p} {cmd[:80].decode(errors='replace')}")
    return left


def _interrupt(tmp: Path, moment: str, sig: int) -> dict:
    prefix, overrides, marker = MOMENTS[moment]
    out = tmp / f"{moment.replace(' ', '_')}-{sig.name}"
    log = out.with_suffix(".log")
    env = {**os.environ, "COLUMNS": "250", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, *prefix, "run", *SMALL, *overrides, "--out", str(out)]
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            text = log.read_text()
            if marker in text and (moment != "waiting for jobs" or _rows(out) >= 1):
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"{moment}: the run ended before the signal:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{moment}: no '{marker}' in time:\n{log.read_text()[-3000:]}"
        if moment == "round 1":
            time.sleep(2)  # clients training
        before = _rows(out)
        tree = _tree(proc.pid)
        os.kill(proc.pid, sig)
        if moment == "waiting for jobs" and sig == signal.SIGTERM:
            os.killpg(proc.pid, sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    time.sleep(1)
    return {"moment": moment, "sig": sig, "code": code, "before": before, "rows": _rows(out), "out": out,
            "log": log.read_text(), "left": _session(proc.pid) + _alive(tree)}


@pytest.mark.slow
def test_signals_at_each_moment_stop_the_run_cleanly(tmp_path):
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda case: _interrupt(tmp_path, *case), CASES))
    for r in results:
        where = f"{r['sig'].name} during {r['moment']}"
        tail = r["log"][-3000:]
        assert r["code"] == 128 + r["sig"], f"{where}: exit {r['code']}\n{tail}"
        assert r["left"] == [], f"{where}: left behind {r['left']}"
        assert "Traceback" not in r["log"] and "Segmentation" not in r["log"], f"{where}\n{tail}"
        assert r["rows"] >= r["before"], where
        summary = json.loads((r["out"] / "summary.json").read_text())
        assert (r["out"] / "report.html").is_file(), where
        assert sum(a["jobs"] for a in summary["attacks"].values()) == r["rows"], where
        if r["moment"] == "the report":  # the run had finished: its report is finished, then the command exits
            assert summary["interrupted"] is None and r["log"].count("report-start") == 1, where
            continue
        assert summary["interrupted"]["signal"] == r["sig"].name, (where, summary["interrupted"])
        if r["moment"] == "waiting for jobs":
            assert r["rows"] >= 1 and summary["interrupted"]["abandoned_jobs"] >= 1, (where, summary)


def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130(monkeypatch, capsys):
    """Importing torch and Flower takes seconds: Ctrl-C then is no traceback either."""
    import builtins

    from fedattack.__main__ import entry

    real = builtins.__import__

    def interrupted(name, globals=None, locals=None, fromlist=(), level=0):
        if name == "fedattack" and fromlist and "cli" in fromlist:
            raise KeyboardInterrupt
        return real(name, globals, locals, fromlist, level)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    with pytest.raises(SystemExit) as info:
        entry()
    assert info.value.code == 130 and capsys.readouterr().err == "fedattack: interrupted\n"


_TWICE = """
import os, signal, sys, time
from fedattack import shutdown
gap = float(sys.argv[1])
with shutdown.handling_signals(force_after=30):
    with shutdown.cooperative():
        fd = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(fd)
        os.write(fd, bytes([signal.SIGTERM]))  # what the interpreter's C handler writes per delivery
        time.sleep(gap)
        os.write(fd, bytes([signal.SIGTERM]))
        stopped = shutdown.wait(5)
        time.sleep(1)  # the watcher has read both
print("wound down", stopped is True)
"""


@pytest.mark.parametrize("gap, forced", [(0.0, False), (0.02, False), (1.0, True)])
def test_the_same_signal_twice_at_once_is_one_stop_and_later_it_forces(gap, forced):
    """GNU `timeout` sends SIGTERM to the command and then to its process group: one stop.
    The same signal a second later is a second request: the command is killed at once."""
    proc = subprocess.run([sys.executable, "-c", _TWICE, str(gap)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert ("SIGTERM again" in proc.stderr) == forced, proc.stderr
    assert (proc.returncode, "wound down True" in proc.stdout) == ((143, False) if forced else (0, True)), proc
