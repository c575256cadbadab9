"""Every shipped config and scenario loads and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedattack import config as fconfig
from fedattack.experiment import build

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "simulations").glob("*.yaml"))


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_shipped_configs_validate(path):
    cfg = fconfig.load(path)
    assert cfg.audit.attacks
    exp = build(cfg)  # its data and partitions: a split that cannot be drawn fails here, not in a user's run
    assert len(exp.partitions) == cfg.fl.num_clients and min(map(len, exp.partitions)) >= 1
