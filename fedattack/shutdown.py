"""Stopping a run cleanly: SIGINT and SIGTERM become a stop request that every part of the run sees.

A signal never raises in the middle of Flower's simulation or of a Ray call (that is what
crashes a Ray driver, or leaves its processes behind). Inside a `cooperative()` section a
signal only records the request and wakes whoever waits on it; each part of the run then
stops at its next checkpoint:

- the ServerApp's grid calls raise `Stopped` (fedattack.server.interrupt), so the simulation
  winds down and Flower shuts Ray down itself;
- the attack dispatchers cancel the jobs still running and stop waiting;
- the run directory's summary and report are rebuilt from the rows on disk, with the
  interruption recorded, and the command exits with 128 + the signal number (130 for SIGINT,
  143 for SIGTERM).

Outside those sections a signal raises `Stopped` in the main thread at once, as Ctrl-C
normally does (nothing has been started that needs stopping). The main thread may be blocked
where Python cannot run a signal handler (joining Flower's threads), so `handling_signals`
also watches a wakeup file descriptor from a thread of its own: the request is recorded the
moment the signal arrives, wherever it was delivered.

A second signal, or a clean stop that takes longer than `FORCE_AFTER` seconds, kills this
process's Ray processes and exits at once: the rows already in leakage.csv stay, and
`fedattack report RUN_DIR` rebuilds the report from them.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)
FORCE_AFTER = 90.0  # seconds a clean stop may take before the process is killed
DUPLICATE_WINDOW = 0.25  # seconds within which the same signal again is one stop delivered twice


class Stopped(KeyboardInterrupt):
    """The run was asked to stop: by a signal (`signum`), or because a part of it failed."""

    def __init__(self, reason: str, signum: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


@dataclass(frozen=True)
class StopRequest:
    reason: str  # "SIGINT", "SIGTERM", or why the run could not go on
    signum: int | None  # the signal, when a signal asked
    since: float  # time.monotonic() of the request


class _Deliveries:
    """Which deliveries of a signal count: the same signal again within DUPLICATE_WINDOW of the
    last one counted is that one delivered twice (GNU `timeout` signals the child and then its
    process group; a terminal signals every process of the foreground group)."""

    def __init__(self) -> None:
        self.last: tuple[int, float] | None = None  # (signal, time) of the last counted delivery

    def counts(self, signum: int, now: float) -> bool:
        if self.last is not None and self.last[0] == signum and now - self.last[1] < DUPLICATE_WINDOW:
            return False
        self.last = (signum, now)
        return True


_lock = threading.Lock()
_event = threading.Event()
_request: StopRequest | None = None
_abandoned = 0  # attack jobs cancelled unfinished because of the stop
_cooperative = 0  # depth of cooperative() sections in the main thread
_handled = _Deliveries()  # the interpreter's handler (main thread); the watcher keeps its own


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def request(reason: str, signum: int | None = None) -> bool:
    """Ask the run to stop; True for the first request (later ones change nothing)."""
    global _request
    with _lock:
        if _request is not None:
            return False
        _request = StopRequest(reason, signum, time.monotonic())
    _event.set()
    return True


def requested() -> StopRequest | None:
    """The stop request, or None while the run may go on."""
    return _request


def check() -> None:
    """Raise `Stopped` if a stop was requested (a checkpoint)."""
    req = _request
    if req is not None:
        raise Stopped(req.reason, req.signum)


def wait(timeout: float) -> bool:
    """Sleep up to `timeout` seconds, waking at once on a stop request; True if one came."""
    return _event.wait(timeout)


def note_abandoned(n: int) -> None:
    """Count attack jobs that a stop left unfinished (they get no row)."""
    global _abandoned
    with _lock:
        _abandoned += n


def abandoned() -> int:
    return _abandoned


def reset() -> None:
    """Forget any earlier request (a process that runs several runs, e.g. the tests)."""
    global _request, _abandoned, _handled
    with _lock:
        _request, _abandoned = None, 0
        _handled = _Deliveries()
    _event.clear()


@contextmanager
def cooperative() -> Iterator[None]:
    """A section of the main thread where a signal does not raise: the code in it checks
    `requested()` and winds down itself."""
    global _cooperative
    _cooperative += 1
    try:
        yield
    finally:
        _cooperative -= 1


# -- signal handling (the command line) --------------------------------------------------

def _on_signal(signum: int, frame) -> None:  # noqa: ARG001 - signal handler signature
    """Python's handler, run in the main thread when it next runs Python code."""
    if not _handled.counts(signum, time.monotonic()):
        return  # the stop under way goes on undisturbed
    first = request(signal_name(signum), signum)
    if first:
        _say(f"fedattack: {signal_name(signum)}: stopping; finished results are kept")
    if _cooperative == 0:
        req = _request
        raise Stopped(req.reason if req else signal_name(signum), req.signum if req else signum)




def _say(msg: str) -> None:
    try:
        print(msg, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def install_handlers() -> None:
    """(Re)install the SIGINT and SIGTERM handlers; main thread only. Call it again after
    anything that replaces them (`ray.init` installs its own SIGTERM handler)."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _on_signal)


@contextmanager
def handling_signals(force_after: float = FORCE_AFTER) -> Iterator[None]:
    """SIGINT and SIGTERM stop the command cleanly while the block runs (main thread only;
    elsewhere the block runs unchanged). Restores the previous handlers on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    reset()
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    rsock, wsock = socket.socketpair()
    rsock.setblocking(True)
    wsock.setblocking(False)
    old_fd = signal.set_wakeup_fd(wsock.fileno(), warn_on_full_buffer=False)
    install_handlers()
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(rsock, done, force_after), name="fedattack-signals",
                               daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        signal.set_wakeup_fd(old_fd)
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        try:
            wsock.send(b"\0")
        except OSError:
            pass
        watcher.join(timeout=5)
        rsock.close()
        wsock.close()


def _watch(rsock: socket.socket, done: threading.Event, force_after: float) -> None:
    """Record each signal as it arrives; force the exit on a second one or past the deadline."""
    seen, deliveries = 0, _Deliveries()
    while not done.is_set():
        req = _request
        timeout = None if req is None else max(0.1, req.since + force_after - time.monotonic())
        rsock.settimeout(timeout)
        try:
            data = rsock.recv(64)
        except socket.timeout:
            if not done.is_set() and _request is not None:
                _force(f"could not stop cleanly within {force_after:g} s", _request.signum)
            continue
        except OSError:
            return
        now = time.monotonic()
        for signum in data:
            if signum not in SIGNALS:
                continue  # the closing byte, or a signal that is not ours
            if not deliveries.counts(signum, now):
                continue
            seen += 1
            if request(signal_name(signum), signum):
                _say(f"fedattack: {signal_name(signum)}: stopping; finished results are kept")
            elif seen > 1 and not done.is_set():
                _force(f"{signal_name(signum)} again", signum)


def _force(why: str, signum: int | None) -> None:
    _say(f"fedattack: {why}: killing this run's Ray processes and exiting now; the rows in leakage.csv are "
         "kept (`fedattack report RUN_DIR` rebuilds the report)")
    kill_descendants(only_ray=False)
    os._exit(128 + (signum or signal.SIGINT))


# -- processes left behind ---------------------------------------------------------------

def _children_table() -> dict[int, list[int]]:
    table: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        table.setdefault(ppid, []).append(int(entry.name))
    return table


def descendants(pid: int | None = None) -> list[int]:
    """Every process below `pid` (default: this one), children first (Linux /proc; [] elsewhere)."""
    table = _children_table()
    out: list[int] = []
    stack = list(table.get(pid or os.getpid(), []))
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(table.get(p, []))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_ray_process(cmdline: str) -> bool:
    return cmdline.startswith("ray::") or "/ray/" in cmdline or "raylet" in cmdline or "gcs_server" in cmdline


def kill_descendants(*, only_ray: bool = True, grace: float = 0.0, exclude: set[int] = frozenset()) -> list[int]:
    """Kill this process's (Ray) descendants but `exclude`: SIGTERM, then after `grace` seconds
    SIGKILL to those still there. Returns the pids signalled."""
    pids = [p for p in descendants() if p not in exclude and (not only_ray or is_ray_process(_cmdline(p)))]
    for sig in ((signal.SIGTERM, signal.SIGKILL) if grace > 0 else (signal.SIGKILL,)):
        for p in pids:
            try:
                os.kill(p, sig)
            except OSError:
                pass
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.1)
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def adopt_orphans() -> bool:
    """Make this process the subreaper of everything it starts (Linux): a Ray worker whose
    raylet exits is re-parented here instead of to init, so `reap_ray` still finds it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _collect_zombies(pids: list[int]) -> None:
    for p in pids:
        try:
            os.waitpid(p, os.WNOHANG)
        except OSError:  # not our child (or already collected)
            pass


def reap_ray(wait: float = 10.0, exclude: set[int] = frozenset()) -> list[int]:
    """After `ray.shutdown()` of a local instance: give the Ray processes below this one (but
    `exclude`, those that were there before) `wait` seconds to exit, then kill the ones left
    (Ray's agents and workers can outlive the instance's shutdown)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        ours = [p for p in descendants() if p not in exclude]
        _collect_zombies(ours)
        if not [p for p in ours if _alive(p) and is_ray_process(_cmdline(p))]:
            return []
        time.sleep(0.2)
    killed = kill_descendants(only_ray=True, grace=2.0, exclude=exclude)
    _collect_zombies(killed)
    return killed


__all__ = ["Stopped", "StopRequest", "request", "requested", "check", "wait", "reset", "cooperative",
           "install_handlers", "handling_signals", "note_abandoned", "abandoned", "descendants",
           "kill_descendants", "reap_ray", "adopt_orphans", "signal_name"]
