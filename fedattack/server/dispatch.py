"""Where attack jobs run: Ray tasks beside the simulation, or a local thread pool.

Ray tasks ask for `num_cpus=0` (Flower's clients hold the CPUs), `num_gpus=audit.gpus_per_job`
and one unit of the custom resource `fedattack_attack`, whose capacity caps how many attacks
run at once. A task whose worker dies is retried once, then recorded as failed.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from fedattack.server.jobs import AttackJob, JobResult, run_job
from fedattack.threat import Truth

ATTACK_RESOURCE = "fedattack_attack"


class Dispatcher(Protocol):
    def submit(self, job: AttackJob, truth: Truth) -> None: ...
    def poll(self) -> list[JobResult]: ...
    def drain(self) -> list[JobResult]: ...
    def pending(self) -> int: ...


def _failed(job: AttackJob, error: str, seconds: float = 0.0) -> JobResult:
    return JobResult(round=job.round, client=job.client, attack=job.attack, defense=job.defense, status="failed",
                     seconds=seconds, adaptive=job.adaptive, error=error[:300], epsilon=job.epsilon,
                     scope="aggregate" if job.observation.num_clients > 1 else "client")


class LocalDispatcher:
    """Runs jobs in a thread pool of this process (no Ray), beside training."""

    def __init__(self, max_workers: int = 1):
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fedattack-attack")
        self._futures: list[tuple[AttackJob, Future]] = []

    def submit(self, job: AttackJob, truth: Truth) -> None:
        self._futures.append((job, self._pool.submit(run_job, job, truth)))

    def _collect(self, block: bool) -> list[JobResult]:
        out, keep = [], []
        for job, fut in self._futures:
            if block or fut.done():
                try:
                    out.append(fut.result())
                except Exception as exc:  # noqa: BLE001
                    out.append(_failed(job, f"{type(exc).__name__}: {exc}"))
            else:
                keep.append((job, fut))
        self._futures = keep
        return out

    def poll(self) -> list[JobResult]:
        return self._collect(block=False)

    def drain(self) -> list[JobResult]:
        results = self._collect(block=True)
        self._pool.shutdown(wait=True)
        return results

    def pending(self) -> int:
        return len(self._futures)


class RayDispatcher:
    """Runs jobs as Ray tasks on the cluster Flower's simulation (or `ray.address`) set up."""

    def __init__(self, gpus_per_job: float = 0.0, max_retries: int = 1):
        import ray

        self._ray = ray
        resources = ray.cluster_resources()
        opts: dict = {"num_cpus": 0, "num_gpus": gpus_per_job, "max_retries": max_retries}
        if resources.get(ATTACK_RESOURCE, 0) > 0:
            opts["resources"] = {ATTACK_RESOURCE: 1}
        self.options = opts
        self._remote = ray.remote(run_job).options(**opts)
        self._refs: dict = {}
        self._started: dict = {}

    def submit(self, job: AttackJob, truth: Truth) -> None:
        ref = self._remote.remote(job, truth)
        self._refs[ref] = job
        self._started[ref] = time.perf_counter()

    def _collect(self, timeout: float | None) -> list[JobResult]:
        if not self._refs:
            return []
        refs = list(self._refs)
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=timeout)
        out = []
        for ref in ready:
            job = self._refs.pop(ref)
            started = self._started.pop(ref)
            try:
                out.append(self._ray.get(ref))
            except Exception as exc:  # noqa: BLE001 - worker died twice, task error, ...
                out.append(_failed(job, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                   time.perf_counter() - started))
        return out

    def poll(self) -> list[JobResult]:
        return self._collect(timeout=0)

    def drain(self) -> list[JobResult]:
        return self._collect(timeout=None)

    def pending(self) -> int:
        return len(self._refs)


def make_dispatcher(gpus_per_job: float, max_concurrent: int) -> Dispatcher:
    """Ray when this process is connected to a Ray cluster, else a local pool."""
    try:
        import ray

        if ray.is_initialized():
            return RayDispatcher(gpus_per_job)
    except ImportError:
        pass
    return LocalDispatcher(max_workers=max_concurrent)
