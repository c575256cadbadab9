"""Shared fixtures: tiny configs that run in seconds on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

from fedattack import config as fconfig


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
    """A config on lfw-subset small enough for unit tests (no attacks by default)."""

    def make(*overrides: str):
        return fconfig.load(None, ["audit.attacks=[]", *overrides])

    return make
