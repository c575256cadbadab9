"""Stopping a simulation run cleanly: a Grid that stops on request, and the guard of a run.

`StoppableGrid` is a Flower Grid that stops when the run is asked to stop (fedattack.shutdown).

The ServerApp spends its time in the grid: waiting for nodes, then for replies (up to
`fl.timeout` per round). Wrapped in `StoppableGrid`, each of those waits wakes every
`interval` seconds and raises `fedattack.shutdown.Stopped` once a stop is requested, so the
ServerApp returns, Flower ends the simulation the normal way and shuts Ray down. Everything
else is the wrapped grid's.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Callable

from flwr.app import Message
from flwr.serverapp import Grid

from fedattack import shutdown
from fedattack.errors import FedattackError, first_line
from fedattack.results import Interruption
from fedattack.server.grids import GridView
from fedattack.text import counted


class StoppableGrid(GridView):
    def __init__(self, grid: Grid, interval: float = 0.1):
        super().__init__(grid)
        self.interval = interval

    def get_node_ids(self) -> Iterable[int]:
        shutdown.check()
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        shutdown.check()
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        shutdown.check()
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        shutdown.check()
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Flower's loop (push, then pull until every reply is in or `timeout` passes), with a
        stop check at every pull."""
        pending = set(self.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while pending:
            got = list(self.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (end is not None and time.monotonic() >= end):
                break
            shutdown.wait(self.interval)
        return replies


def stoppable(grid: Grid) -> Grid:
    """`grid`, wrapped so that a stop request ends the ServerApp's waits."""
    return grid if isinstance(grid, StoppableGrid) else StoppableGrid(grid)


# -- one run, from Ray's start to its report ---------------------------------------------

def interruption(errors: list[BaseException] = (), abandoned_before: int = 0) -> Interruption | None:
    """What the summary records about an early stop (None: the run finished). Attack jobs
    abandoned since `abandoned_before` (the count where the run started) mark a run as
    interrupted even without a stop request: Ray went away under them (an app's process stopped
    from outside, Flower ending the simulation)."""
    req = shutdown.requested()
    lost = max(0, shutdown.abandoned() - abandoned_before)
    if req is None and not errors:
        if not lost:
            return None
        return Interruption(reason="Ray stopped before every attack job had finished", abandoned_jobs=lost)
    if req is not None and req.signum is not None:
        return Interruption(reason=req.reason, signal=shutdown.signal_name(req.signum), abandoned_jobs=lost)
    if errors:
        exc = errors[0]
        cause = getattr(exc, "cause", None)  # a RayTaskError wraps what the task raised
        exc = cause if isinstance(cause, BaseException) else exc
        line = first_line(exc)
        reason = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    else:
        reason = req.reason if req is not None else "stopped"
    return Interruption(reason=reason[:300], abandoned_jobs=lost)


@contextmanager
def _ray_auto_connect(enabled: bool) -> Iterator[None]:
    """Ray starts a new local instance when an API is called after `ray.shutdown()`; a run
    must never do that (it would be left behind), so its Ray calls do not auto-connect."""
    try:
        import ray._private.auto_init_hook as hook
    except ImportError:  # pragma: no cover - another Ray layout: nothing to switch
        yield
        return
    before = hook.enable_auto_connect
    hook.enable_auto_connect = enabled
    try:
        yield
    finally:
        hook.enable_auto_connect = before


class RunGuard:
    """The life of one simulation run: from starting Ray to its report, whatever stops it.

        with RunGuard(progress) as guard:            # signals stop the run at its checkpoints
            init_ray(cfg)
            guard.ray_started()
            guard.store = RunStore(out_dir, cfg=cfg)
            ...
            @server_app.main()
            def _main(grid, context):
                with guard.server(grid) as grid:      # the ServerApp's thread
                    run_audit(grid, ...)
            guard.simulate(run_simulation, ...)
        summary = guard.summary

    On the way out, whether the simulation ended, failed or was interrupted: the ServerApp
    thread is asked to stop and awaited, Ray is shut down and (a local instance) the Ray
    processes it left are reaped, and summary.json and report.html are rebuilt from the rows on disk
    with the interruption recorded. Then the first error is raised, or `Stopped` for a signal
    (the command's exit code is 128 + its number).
    """

    def __init__(self, progress: Any = None, *, local_ray: bool = True, server_grace: float = 30.0):
        self.progress = progress
        self.local_ray = local_ray  # the run starts its own Ray instance (not a cluster's): reap what it leaves
        self._before: set[int] = set()
        self.server_grace = server_grace
        self.store: Any = None  # the RunStore, once created
        self.auditor: Any = None  # or the Auditor whose session writes the run directory
        self.summary: Any = None
        self.errors: list[BaseException] = []
        self._server_started = threading.Event()
        self._server_done = threading.Event()
        self._stack = ExitStack()

    def __enter__(self) -> "RunGuard":
        shutdown.check()  # a signal already came: nothing is started
        shutdown.reset()  # an earlier run's stop (a process running several runs)
        if self.local_ray:
            shutdown.adopt_orphans()  # Ray workers outliving their raylet stay ours to reap
            self._before = set(shutdown.descendants())
        self._stack.enter_context(shutdown.cooperative())
        self._stack.enter_context(_ray_auto_connect(False))
        return self

    def ray_started(self) -> None:
        """After ray.init (which installs its own SIGTERM handler): ours again, and a checkpoint."""
        shutdown.install_handlers()
        shutdown.check()

    @contextmanager
    def server(self, grid: Grid) -> Iterator[Grid]:
        """The ServerApp's main: its grid stops on a stop request, and the Stopped it raises ends
        the ServerApp normally (Flower then ends the simulation); other errors are kept."""
        self._server_started.set()
        try:
            yield stoppable(grid)
        except shutdown.Stopped:
            pass
        except FedattackError as exc:  # one line for the user once Flower has shut down
            self.errors.append(exc)
        except BaseException as exc:  # surfaced after Flower has shut down
            self.errors.append(exc)
            raise
        finally:
            self._server_done.set()

    def simulate(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - kept; raised after the report is written
            if not any(exc is e for e in self.errors):
                self.errors.append(exc)
            return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        try:
            if exc is not None and not isinstance(exc, shutdown.Stopped) and not any(exc is e for e in self.errors):
                self.errors.append(exc)
            if self._server_started.is_set() and not self._server_done.is_set():
                shutdown.request("the simulation ended before the server did")
                self._server_done.wait(self.server_grace)
            import ray

            if ray.is_initialized():
                ray.shutdown()
            if self.local_ray:
                shutdown.reap_ray(exclude=self._before)
            store = self.store if self.store is not None else getattr(self.auditor, "store", None)
            req = shutdown.requested()
            if store is None and self.auditor is not None and req is not None and req.signum is not None:
                store = self.auditor.open_store()  # stopped by a signal before round 1's replies: say so on disk
            if store is not None:
                self.store = store
                # the auditor's session wrote it, an interruption by a signal included (one during
                # the report lets it finish: the run had ended); rebuilt here after an error
                done = getattr(self.auditor, "summary", None)
                self.summary = (done if done is not None and not self.errors
                                else store.finish(interrupted=interruption(self.errors)))
                self._say_where()
        finally:
            self._stack.close()
        if self.errors:
            raise self.errors[0]
        req = shutdown.requested()
        if req is not None:
            raise shutdown.Stopped(req.reason, req.signum)
        return False

    def _say_where(self) -> None:
        stop = self.summary.interrupted if self.summary is not None else None
        if stop is None or stop.signal is None:
            return
        n = self.store.num_results
        print(f"fedattack: stopped by {stop.signal}: {counted(n, 'finished result')} in "
              f"{self.store.dir / 'leakage.csv'}; {counted(stop.abandoned_jobs, 'unfinished job')} cancelled; "
              f"report {self.store.dir / 'report.html'}",
              file=sys.stderr, flush=True)
