"""Name -> object registries with `module:attr` import paths for user extensions."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from fedattack.errors import ConfigError

T = TypeVar("T")


@dataclass
class Registry(Generic[T]):
    """A named collection of plug-ins (attacks, defenses, datasets, models, strategies).

    Entries are registered by name; `get` also accepts `package.module:attr`, so a user's
    own object plugs in without being registered. An unknown name is a ConfigError naming
    the config field the registry serves (`field_name`), so `get` is also the validation of
    that field.
    """

    kind: str
    field_name: str
    _items: dict[str, T] = field(default_factory=dict)
    _docs: dict[str, str] = field(default_factory=dict)

    def register(self, name: str, obj: T | None = None, *, doc: str = "") -> Any:
        """Register `obj` under `name`; without `obj`, a decorator that registers what it decorates."""

        def add(o: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = o
            self._docs[name] = doc or (getattr(o, "__doc__", "") or "").strip().split("\n")[0]
            return o

        return add(obj) if obj is not None else add

    def unregister(self, name: str) -> T:
        """Remove and return the entry `name` (KeyError if there is none)."""
        self._docs.pop(name, None)
        return self._items.pop(name)

    @contextmanager
    def temporarily(self, name: str, obj: T, *, doc: str = "") -> Iterator[T]:
        """Register `obj` as `name` for the duration of a with-block (tests, experiments)."""
        self.register(name, obj, doc=doc)
        try:
            yield obj
        finally:
            self.unregister(name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def doc(self, name: str) -> str:
        return self._docs.get(name, "")

    def check(self, name: str) -> None:
        """Validate `name` without importing anything: registered, or a `module:attr` path."""
        if name not in self._items and ":" not in name:
            raise ConfigError(
                self.field_name, f"unknown {self.kind} '{name}'; allowed: {', '.join(self.names())} or module:attr"
            )

    def get(self, name: str) -> T:
        """The entry `name`, or the object at import path `module:attr`."""
        self.check(name)
        if name in self._items:
            return self._items[name]
        return import_path(name, self.field_name)


def import_path(path: str, field_name: str) -> Any:
    """Import `package.module:attr`, raising a ConfigError naming the field on failure."""
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(field_name, f"cannot import '{path}' ({exc})") from None
    return obj


def call_with_known(fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
    """Call fn with the subset of kwargs its signature accepts."""
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in sig.parameters})
