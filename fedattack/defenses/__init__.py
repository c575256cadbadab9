"""Client-side defenses. Every module in this package registers its defenses on import."""

import importlib
import pkgutil

from fedattack.defenses.base import DEFENSES, DefenseContext, DefenseSpec, register_defense

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name not in ("base",):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["DEFENSES", "DefenseContext", "DefenseSpec", "register_defense"]
