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
"""

from __future__ import annotations

import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Protocol

from fedattack.attacks import ATTACKS
from fedattack.results import JobResult
from fedattack.server.jobs import AttackJob, failed_result, run_job
from fedattack.threat import Truth

ATTACK_RESOURCE = "fedattack_attack"


class Dispatcher(Protocol):
    def submit(self, job: AttackJob, truth: Truth) -> None: ...
    def poll(self) -> list[JobResult]: ...
    def drain(self, on_result: Callable[[JobResult], None] | None = None) -> list[JobResult]: ...
    def pending(self) -> int: ...


def warn(msg: str) -> None:
    print(f"fedattack: warning: {msg}", file=sys.stderr, flush=True)


class LocalDispatcher:
    """Runs jobs in a thread pool of this process (no Ray), beside training."""

    def __init__(self, max_workers: int = 1):
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fedattack-attack")
        self._futures: list[tuple[AttackJob, Future]] = []

    def submit(self, job: AttackJob, truth: Truth) -> None:
        self._futures.append((job, self._pool.submit(run_job, job, truth)))

    def _collect(self, block: bool) -> list[JobResult]:
        done = [fut for _, fut in self._futures if block or fut.done()]
        self._futures = [(job, fut) for job, fut in self._futures if not (block or fut.done())]
        return [fut.result() for fut in done]  # run_job records attack failures; what it raises is a bug

    def poll(self) -> list[JobResult]:
        return self._collect(block=False)

    def drain(self, on_result: Callable[[JobResult], None] | None = None) -> list[JobResult]:
        """Every outstanding result, each handed to `on_result` as soon as it is collected."""
        results = []
        for _, fut in self._futures:
            results.append(fut.result())  # run_job records attack failures; what it raises is a bug
            if on_result is not None:
                on_result(results[-1])
        self._futures = []
        self._pool.shutdown(wait=True)
        return results

    def pending(self) -> int:
        return len(self._futures)


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
    else:
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


class RayDispatcher:
    """Runs jobs as Ray tasks on the cluster this process is connected to.

    `stall_grace` seconds after the last node able to run attack jobs has left the cluster,
    `drain` records the jobs still pending as failed instead of waiting for it forever.
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
        self.max_in_flight: int | None = None  # None: the custom resource caps concurrency
        self._remote: Any = None
        self._queue: deque[tuple[AttackJob, tuple]] = deque()  # job, its task arguments
        self._refs: dict[Any, tuple[AttackJob, float]] = {}
        self._shared: dict[str, tuple[Any, Any]] = {}  # what consecutive jobs share -> (object, its ref)

    def _setup(self) -> None:
        opts, notes = task_options(self._ray.nodes(), self.gpus_per_job, self.max_retries)
        for note in notes:
            self.on_warning(note)
        self.options = opts
        self.max_in_flight = None if "resources" in opts else self.max_concurrent
        self._remote = self._ray.remote(run_remote).options(**opts)

    def submit(self, job: AttackJob, truth: Truth) -> None:
        if self.options is None:
            self._setup()
        args = (replace(job, observation=None), self._put("observation", job.observation), self._put("truth", truth),
                self._put(f"spec:{job.attack}", ATTACKS.get(job.attack)))
        self._queue.append((job, args))
        self._fill()

    def _put(self, key: str, obj: Any) -> Any:
        """Ray object ref of `obj`, put once while consecutive jobs pass the same object."""
        held = self._shared.get(key)
        if held is None or held[0] is not obj:
            held = self._shared[key] = (obj, self._ray.put(obj))
        return held[1]

    def _fill(self) -> None:
        while self._queue and (self.max_in_flight is None or len(self._refs) < self.max_in_flight):
            job, args = self._queue.popleft()
            self._refs[self._remote.remote(*args)] = (job, time.perf_counter())

    def _result(self, ref: Any) -> JobResult:
        job, started = self._refs.pop(ref)
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError:  # run_job raised: a strict job's bug, not the cluster
            raise
        except self._ray.exceptions.RayError as exc:  # worker died twice, out of memory, node lost, ...
            return failed_result(job, status="failed", error=f"{type(exc).__name__}: {str(exc).strip()}",
                                 seconds=time.perf_counter() - started)

    def _ready(self, timeout: float) -> list[JobResult]:
        """Results of finished tasks, waiting up to `timeout` seconds for the first."""
        if not self._refs:
            return []
        ready, rest = self._ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready and rest:
            ready += self._ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return [self._result(ref) for ref in ready]

    def poll(self) -> list[JobResult]:
        out = self._ready(timeout=0)
        self._fill()
        return out

    def drain(self, on_result: Callable[[JobResult], None] | None = None) -> list[JobResult]:
        """Every outstanding result, each handed to `on_result` as soon as it is collected."""
        out: list[JobResult] = []
        stalled_since: float | None = None
        while self.pending():
            self._fill()
            got = self._ready(timeout=min(5.0, max(0.5, self.stall_grace / 4)))
            out += got
            for res in got if on_result is not None else ():
                on_result(res)
            if got or feasible(self._ray.nodes(), self.options or {}):
                stalled_since = None
                continue
            stalled_since = stalled_since or time.perf_counter()
            if time.perf_counter() - stalled_since >= self.stall_grace:
                gone = self._abandon(f"no alive Ray node can run attack jobs ({self._needs()}) "
                                     f"for {self.stall_grace:g} s")
                out += gone
                for res in gone if on_result is not None else ():
                    on_result(res)
        return out

    def _needs(self) -> str:
        opts = self.options or {}
        parts = [f"{k}={v:g}" for k, v in opts.get("resources", {}).items()]
        if opts.get("num_gpus"):
            parts.append(f"GPU={opts['num_gpus']:g}")
        return ", ".join(parts) or "any node"

    def _abandon(self, reason: str) -> list[JobResult]:
        out = []
        for ref, (job, started) in list(self._refs.items()):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - the task may have ended meanwhile
                pass
            out.append(failed_result(job, status="failed", error=reason, seconds=time.perf_counter() - started))
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
