"""The attack suite. Every module in this package registers its attacks on import."""

import importlib
import pkgutil

from fedattack.attacks.base import ATTACKS, AttackContext, AttackSpec, NoParams, register_attack

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name not in ("base",):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["ATTACKS", "AttackContext", "AttackSpec", "NoParams", "register_attack"]
