"""Every shipped config and scenario loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedattack import config as fconfig

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "simulations").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_shipped_configs_validate(path):
    cfg = fconfig.load(path)
    assert cfg.audit.attacks
