"""Shared fixtures: tiny configs that run in seconds on 2 CPU cores, strict attack jobs."""

from __future__ import annotations

import pytest
import torch

from fedattack.testing.cases import case_config
from fedattack.server.jobs import STRICT_ENV


@pytest.fixture(autouse=True, scope="session")
def _strict_attack_jobs():
    """Attack jobs made during the tests are strict: an exception that is not an expected
    attack failure (a programming error) raises instead of becoming an "error" row. The
    variable reaches Ray workers and `fedattack` subprocesses through the environment; a test
    of the recorded form sets it to 0 with monkeypatch."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(STRICT_ENV, "1")
        yield


@pytest.fixture(autouse=True)
def _torch_threads():
    """One torch thread per test: the cases are small, and two threads on a shared 2-core
    machine thrash (measured about 20x slower under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def small_cfg():
    """A config on lfw-subset small enough for unit tests (no attacks by default), in the
    attack-case setting (DLG's LeNet with sigmoids at lr 0.01) the tests' figures refer to."""

    def make(*overrides: str):
        return case_config(*overrides)

    return make


@pytest.fixture
def flower_task():
    """Flower messages need a task identity (set by Flower's runtime in a real run)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
