"""Shared fixtures: tiny configs that run in seconds on 2 CPU cores."""

from __future__ import annotations

import pytest
import torch

from fedattack import config as fconfig


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def small_cfg():
    """A config on lfw-subset small enough for unit tests (no attacks by default)."""

    def make(*overrides: str):
        return fconfig.load(None, ["audit.attacks=[]", *overrides])

    return make
