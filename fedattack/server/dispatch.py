"""Where attack jobs run: Ray tasks beside the simulation, or a local thread pool.

Ray tasks ask for `num_cpus=0` (Flower's clients hold the CPUs), `num_gpus=audit.gpus_per_job`
and one unit of the custom resource `fedattack_attack`, whose capacity caps how many attacks
run at once (`fedattack run` declares it on a local Ray instance; on a cluster, attack workers
declare it with `ray start --resources='{"fedattack_attack": N}'`). A task whose worker dies is
retried once, then recorded as failed; every other job's result is kept. An exception that
run_job itself raises (a strict job's bug, a bug in scoring) is raised here too, not recorded.

Where no node offers the resource (a cluster started without it, Flower's own Ray instance
under `flwr run`), the dispatcher says so in one warning line and keeps at most
`audit.max_concurrent` tasks in flight itself. Where no node offers `audit.gpus_per_job` GPUs,
it says so and runs attacks on CPU rather than wait for GPUs that will never come.

Results are handed on as they arrive: `poll` returns the finished ones, `drain` yields each
until none is pending. A job past its time limit (`AttackJob.timeout`, audit.job_timeout) is
stopped and recorded as failed. On a stop request (fedattack.shutdown) the dispatchers make
no further Ray call: what is pending is cancelled and counted, and `drain` returns.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Callable, Protocol

from fedattack import shutdown
from fedattack.attacks import ATTACKS
from fedattack.results import JobResult
from fedattack.server.jobs import AttackJob, failed_result, run_job
from fedattack.threat import Truth

ATTACK_RESOURCE = "fedattack_attack"


class Dispatcher(Protocol):
    def submit(self, job: AttackJob, truth: Truth) -> None: ...
    def poll(self) -> list[JobResult]: ...
    def drain(self) -> Iterator[JobResult]: ...
    def pending(self) -> int: ...


def warn(msg: str) -> None:
    print(f"fedattack: warning: {msg}", file=sys.stderr, flush=True)


THREAD_PREFIX = "fedattack-attack-"
JOIN_THREAD = "fedattack-ray-join"  # ray.init joining a cluster, left retrying where none answers


def abandoned_threads() -> list[threading.Thread]:
    """Threads left running in native code: attack jobs abandoned at a time-out or a stop,
    and a join of a Ray cluster that never answered. Native code (torch, Ray's core worker)
    running in a thread while the interpreter finalizes can abort the process, so the command
    line ends with `os._exit` where there are any (`fedattack.cli.entry`)."""
    return [t for t in threading.enumerate()
            if (t.name.startswith(THREAD_PREFIX) or t.name == JOIN_THREAD) and t.is_alive()]


class LocalDispatcher:
    """Runs jobs in threads of this process (no Ray), beside training, `max_workers` at a time.

    Each job runs in a daemon thread of its own, so a job past its time limit (`job.timeout`)
    or cut short by a stop request can be abandoned: it is recorded (a failed row, or nothing
    on a stop) and its thread is left to end unobserved, never joined.
    """

    def __init__(self, max_workers: int = 1):
        self.max_workers = max(1, max_workers)
        self._queue: deque[tuple[AttackJob, Truth]] = deque()
        self._running: dict[int, tuple[AttackJob, float]] = {}  # key -> job, its start (monotonic)
        self._done: queue.Queue[tuple[int, JobResult | None, BaseException | None]] = queue.Queue()
        self._threads: dict[int, threading.Thread] = {}
        self._next = 0

    def submit(self, job: AttackJob, truth: Truth) -> None:
        self._queue.append((job, truth))
        self._fill()

    def _fill(self) -> None:
        while self._queue and len(self._running) < self.max_workers:
            job, truth = self._queue.popleft()
            key, self._next = self._next, self._next + 1
            self._running[key] = (job, time.monotonic())
            thread = self._threads[key] = threading.Thread(target=self._work, args=(key, job, truth),
                                                           name=f"{THREAD_PREFIX}{key}", daemon=True)
            thread.start()

    def _work(self, key: int, job: AttackJob, truth: Truth) -> None:
        try:
            self._done.put((key, run_job(job, truth), None))
        except BaseException as exc:  # noqa: BLE001 - re-raised where results are collected
            self._done.put((key, None, exc))

    def _collect(self, wait: float) -> list[JobResult]:
        out: list[JobResult] = []
        try:
            item = self._done.get(timeout=wait) if wait > 0 and self._running else self._done.get_nowait()
            while True:
                key, res, exc = item
                thread = self._threads.pop(key, None)
                if thread is not None:  # it has put its result: let it end before the interpreter does
                    thread.join(timeout=10)
                if self._running.pop(key, None) is not None:  # else: abandoned, its late result is dropped
                    if exc is not None:
                        raise exc  # run_job records attack failures; what it raises is a bug
                    out.append(res)
                item = self._done.get_nowait()
        except queue.Empty:
            pass
        now = time.monotonic()
        for key, (job, started) in list(self._running.items()):
            if timed_out(job, started, now):
                del self._running[key]
                out.append(timeout_result(job, now - started))
        self._fill()
        return out

    def poll(self) -> list[JobResult]:
        return self._collect(0)

    def drain(self) -> Iterator[JobResult]:
        """Each result as it arrives until none is pending; on a stop request, abandon the rest."""
        while self.pending():
            if shutdown.requested():
                self.abandon()
                return
            yield from self._collect(0.2)

    def abandon(self) -> int:
        """Stop waiting for every pending job; returns how many there were."""
        n = self.pending()
        self._queue.clear()
        self._running.clear()
        shutdown.note_abandoned(n)
        return n

    def pending(self) -> int:
        return len(self._queue) + len(self._running)


def timed_out(job: AttackJob, started: float, now: float) -> bool:
    return job.timeout > 0 and now - started > job.timeout


def timeout_result(job: AttackJob, seconds: float) -> JobResult:
    return failed_result(job, status="failed", seconds=seconds,
                         error=f"timed out after {job.timeout:g} s (audit.job_timeout); the attack was stopped")


# -- Ray ------------------------------------------------------------------------------

def task_options(nodes: list[dict], gpus_per_job: float, max_retries: int = 1) -> tuple[dict, list[str]]:
    """Ray task options for attack jobs on a cluster whose nodes are `nodes` (as `ray.nodes()`
    lists them), and the warnings to print where the cluster cannot honour the config."""
    alive = [n.get("Resources") or {} for n in nodes if n.get("Alive", True)]
    alive = [r for r in alive if r]
    attack_nodes = [r for r in alive if r.get(ATTACK_RESOURCE, 0) >= 1]
    opts: dict[str, Any] = {"num_cpus": 0, "num_gpus": gpus_per_job, "max_retries": max_retries}
    notes = []
    if attack_nodes:
        opts["resources"] = {ATTACK_RESOURCE: 1}
    elif len(alive) > 1:  # on one machine there is nothing to place: no note
        notes.append(f"no Ray node offers the '{ATTACK_RESOURCE}' resource; attack jobs run anywhere in the "
                     f"cluster, at most audit.max_concurrent at a time (start attack workers with "
                     f"ray start --resources='{{\"{ATTACK_RESOURCE}\": N}}' to place and cap them)")
    pool = attack_nodes or alive
    if gpus_per_job > 0 and not any(r.get("GPU", 0) >= gpus_per_job for r in pool):
        where = f"node with the '{ATTACK_RESOURCE}' resource" if attack_nodes else "Ray node"
        notes.append(f"audit.gpus_per_job={gpus_per_job:g} but no {where} has that many GPUs; attack jobs run on CPU")
        opts["num_gpus"] = 0
    return opts, notes


def feasible(nodes: list[dict], opts: dict) -> bool:
    """Whether some alive node can ever run a task with options `opts`."""
    need = {"GPU": opts.get("num_gpus", 0), **opts.get("resources", {})}
    for n in nodes:
        res = n.get("Resources") or {}
        if n.get("Alive", True) and res and all(res.get(k, 0) >= v for k, v in need.items() if v > 0):
            return True
    return False


def run_remote(job: AttackJob, observation: Any, truth: Truth, spec: Any) -> JobResult:
    """The Ray task: make sure this worker knows the attack, then run the job.

    The driver ships the attack's spec with the job, so an attack registered outside
    fedattack.attacks (a user's module, a script) runs on workers that never imported it.
    The observation travels apart from the job: every attack on one update shares one copy
    in Ray's object store.
    """
    if ":" not in job.attack and job.attack not in ATTACKS.names():
        ATTACKS.register(job.attack, spec, doc=spec.paper)
    return run_job(replace(job, observation=observation), truth)


def warm_worker() -> int:
    """A Ray task that does nothing but load itself: the worker imports this module, and with it
    everything attack jobs need (seconds on a small machine), before the first job arrives.
    Returns the worker's pid."""
    return os.getpid()


class RayDispatcher:
    """Runs jobs as Ray tasks on the cluster this process is connected to.

    At most as many tasks are in flight as the cluster has attack slots (the `fedattack_attack`
    resource, re-read while jobs wait; `max_concurrent` where no node offers it), so a job's
    time limit (`job.timeout`, from audit.job_timeout) counts from when it got its slot: a task
    past it is cancelled and recorded as failed. `stall_grace` seconds after the last node able
    to run attack jobs has left the cluster, `drain` records the jobs still pending as failed
    instead of waiting for it forever. On a stop request (fedattack.shutdown) nothing more is
    asked of Ray: `drain` cancels what is in flight and returns.
    """

    def __init__(self, *, gpus_per_job: float = 0.0, max_concurrent: int = 2, max_retries: int = 1,
                 stall_grace: float = 60.0, on_warning: Callable[[str], None] = warn):
        import ray

        self._ray = ray
        self.gpus_per_job = gpus_per_job
        self.max_concurrent = max(1, max_concurrent)
        self.max_retries = max_retries
        self.stall_grace = stall_grace
        self.on_warning = on_warning
        self.options: dict | None = None  # decided at the first submission
        self.max_in_flight: int = self.max_concurrent  # the cluster's attack slots, where it has any
        self._slots_read = 0.0  # when the cluster's attack slots were last counted (monotonic)
        self._remote: Any = None
        self._queue: deque[tuple[AttackJob, tuple]] = deque()  # job, its task arguments
        self._refs: dict[Any, tuple[AttackJob, float]] = {}  # task -> job, when it got its slot (monotonic)
        self._shared: dict[str, tuple[Any, Any]] = {}  # what consecutive jobs share -> (object, its ref)
        self._warming: Any = None  # the warm-up task (warm), left to finish on its own

    def _setup(self) -> None:
        opts, notes = task_options(self._ray.nodes(), self.gpus_per_job, self.max_retries)
        for note in notes:
            self.on_warning(note)
        self.options = opts
        self._count_slots()
        self._remote = self._ray.remote(run_remote).options(**opts)

    def _count_slots(self) -> None:
        """max_in_flight: the attack slots of the alive nodes (at least 1), or max_concurrent."""
        self._slots_read = time.monotonic()
        if self.options is None or "resources" not in self.options:
            self.max_in_flight = self.max_concurrent
            return
        slots = sum(int((n.get("Resources") or {}).get(ATTACK_RESOURCE, 0)) for n in self._ray.nodes()
                    if n.get("Alive", True))
        self.max_in_flight = max(1, slots)

    def _live(self) -> bool:
        """Whether Ray may be called: connected, and no stop requested (a Ray call after
        `ray.shutdown()` would start a new local instance)."""
        return shutdown.requested() is None and self._ray.is_initialized()

    def warm(self) -> Any:
        """Start an attack worker now (its imports overlap the first round's training); returns
        the Ray reference to its pid (None when Ray may not be called)."""
        if not self._live():
            return None
        if self.options is None:
            self._setup()
        self._warming = self._ray.remote(warm_worker).options(**self.options).remote()
        return self._warming

    def submit(self, job: AttackJob, truth: Truth) -> None:
        if not self._live():
            return self._drop(job)
        if self.options is None:
            self._setup()
        args = (replace(job, observation=None), self._put("observation", job.observation), self._put("truth", truth),
                self._put(f"spec:{job.attack}", ATTACKS.get(job.attack)))
        self._queue.append((job, args))
        self._fill()

    def _drop(self, job: AttackJob) -> None:
        shutdown.note_abandoned(1)

    def _put(self, key: str, obj: Any) -> Any:
        """Ray object ref of `obj`, put once while consecutive jobs pass the same object."""
        held = self._shared.get(key)
        if held is None or held[0] is not obj:
            held = self._shared[key] = (obj, self._ray.put(obj))
        return held[1]

    def _fill(self) -> None:
        if self._queue and len(self._refs) >= self.max_in_flight and time.monotonic() - self._slots_read > 5:
            self._count_slots()  # nodes with attack slots may have joined
        while self._queue and len(self._refs) < self.max_in_flight:
            job, args = self._queue.popleft()
            self._refs[self._remote.remote(*args)] = (job, time.monotonic())

    def _result(self, ref: Any) -> JobResult:
        job, started = self._refs.pop(ref)
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError:  # run_job raised: a strict job's bug, not the cluster
            raise
        except self._ray.exceptions.RayError as exc:  # worker died twice, out of memory, node lost, ...
            return failed_result(job, status="failed", error=f"{type(exc).__name__}: {str(exc).strip()}",
                                 seconds=time.monotonic() - started)

    def _ready(self, timeout: float) -> list[JobResult]:
        """Results of finished tasks, waiting up to `timeout` seconds for the first; then the
        tasks past their time limit, cancelled and recorded as failed."""
        if not self._refs:
            return []
        ready, rest = self._ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready and rest:
            ready += self._ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        out = [self._result(ref) for ref in ready]
        now = time.monotonic()
        for ref, (job, started) in list(self._refs.items()):
            if timed_out(job, started, now):
                self._cancel(ref)
                del self._refs[ref]
                out.append(timeout_result(job, now - started))
        return out

    def _cancel(self, ref: Any) -> None:
        try:
            self._ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - the task may have ended meanwhile
            pass

    def poll(self) -> list[JobResult]:
        if not self._live():
            return []
        out = self._ready(timeout=0)
        self._fill()
        return out

    def drain(self) -> Iterator[JobResult]:
        """Each result as it arrives until none is pending (a stuck job ends at its time
        limit); on a stop request, cancel what is in flight and return."""
        stalled_since: float | None = None
        while self.pending():
            if not self._live():
                self.abandon()
                return
            self._fill()
            got = self._ready(timeout=min(1.0, max(0.2, self.stall_grace / 4)))
            yield from got
            if got or not self._live() or feasible(self._ray.nodes(), self.options or {}):
                stalled_since = None
                continue
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since >= self.stall_grace:
                yield from self._abandon(f"no alive Ray node can run attack jobs ({self._needs()}) "
                                         f"for {self.stall_grace:g} s")

    def abandon(self) -> int:
        """Stop: cancel the tasks in flight (while Ray is up), forget the queue; returns how many
        jobs were pending. They get no row: the run's summary records the interruption."""
        n = self.pending()
        if self._ray.is_initialized():
            for ref in list(self._refs):
                self._cancel(ref)
        self._refs.clear()
        self._queue.clear()
        shutdown.note_abandoned(n)
        return n

    def _needs(self) -> str:
        opts = self.options or {}
        parts = [f"{k}={v:g}" for k, v in opts.get("resources", {}).items()]
        if opts.get("num_gpus"):
            parts.append(f"GPU={opts['num_gpus']:g}")
        return ", ".join(parts) or "any node"

    def _abandon(self, reason: str) -> list[JobResult]:
        out = []
        now = time.monotonic()
        for ref, (job, started) in list(self._refs.items()):
            self._cancel(ref)
            out.append(failed_result(job, status="failed", error=reason, seconds=now - started))
        self._refs.clear()
        out += [failed_result(job, status="failed", error=reason) for job, _ in self._queue]
        self._queue.clear()
        return out

    def pending(self) -> int:
        return len(self._queue) + len(self._refs)


def make_dispatcher(*, gpus_per_job: float, max_concurrent: int) -> Dispatcher:
    """Ray when this process is connected to a Ray cluster, else a local pool."""
    try:
        import ray

        if ray.is_initialized():
            return RayDispatcher(gpus_per_job=gpus_per_job, max_concurrent=max_concurrent)
    except ImportError:
        pass
    return LocalDispatcher(max_workers=max_concurrent)
