"""Name -> object registries with `module:attr` import paths for user extensions.

An import path runs code from the user's own environment: importing `package.module` executes
that module. Before anything imported is used, it is checked against the kind of object the
registry holds (`Registry.accepts`, or by default the kind of the registered entries: an
instance of their type, or a function or class of the user's own that takes the arguments they
take), so `model.name=os:system` is refused with one line naming the field and never called.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, TypeVar

from fedattack.errors import ConfigError, first_line

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
    # what an imported object must be: None if it fits, else why not ("is a builtin function, ...");
    # None: `like_entries`, the kind of the registered entries
    accepts: Callable[[Any], str | None] | None = None
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

    def check(self, name: str, also: tuple[str, ...] = ()) -> None:
        """Validate `name` without importing anything: registered, a `module:attr` path, or one of
        `also` (values the field takes besides entries, such as audit.labels' "auto")."""
        if name not in self._items and name not in also and ":" not in name:
            raise ConfigError(
                self.field_name,
                f"unknown {self.kind} '{name}'; allowed: {', '.join([*also, *self.names()])} or module:attr"
            )

    def get(self, name: str) -> T:
        """The entry `name`, or the object at import path `module:attr`."""
        self.check(name)
        if name in self._items:
            return self._items[name]
        obj = import_path(name, self.field_name)
        problem = (self.accepts or self.like_entries)(obj)
        if problem:
            raise ConfigError(self.field_name, f"'{name}' {problem}")
        return obj

    def find(self, name: str) -> T | None:
        """As `get` (a registered name, or the object at a `module:attr` path), or None where this
        installation has neither: for code that acts on what it knows and leaves the rest."""
        try:
            return self.get(name)
        except ConfigError:
            return None

    def like_entries(self, obj: Any) -> str | None:
        """Why `obj` is not the kind of object registered here (None if it is): an instance of
        the entries' type, or, where the entries are functions or classes, a function or class
        outside the standard library that takes their positional arguments."""
        entries = list(self._items.values())
        if not entries:
            return None
        if all(inspect.isfunction(e) or inspect.isclass(e) for e in entries):
            least = min(entries, key=_required_positional)
            return plain_callable(obj, _required_positional(least), self.kind, names=_positional_names(least))
        types = tuple({type(e) for e in entries})
        if not isinstance(obj, types):
            expected = " or ".join(sorted(t.__name__ for t in types))
            return f"is {describe(obj)}, not {article(self.kind)} ({expected})"
        return None


def import_path(path: str, field_name: str) -> Any:
    """Import `package.module:attr`, raising a ConfigError naming the field on failure."""
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        hint = ("; add the folder that holds it to PYTHONPATH (PYTHONPATH=. where you run from that folder)"
                if isinstance(exc, ModuleNotFoundError) and exc.name == module_name.split(".")[0] else "")
        raise ConfigError(field_name, f"cannot import '{path}' ({exc}{hint})") from None
    except SystemExit as exc:  # the module ran a script's exit: not a plug-in to load
        raise ConfigError(field_name, f"cannot import '{path}': importing it called sys.exit({exc.code!r}); "
                                      "a plug-in module defines what it names and returns") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed while it ran: one line, where
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise ConfigError(field_name, f"cannot import '{path}': importing it raised {type(exc).__name__}: "
                                      f"{first_line(exc)} ({frame.filename}, line {frame.lineno})") from None
    return obj


def describe(obj: Any) -> str:
    """A few words for what `obj` is, for error messages."""
    if inspect.isclass(obj):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    if inspect.isfunction(obj):
        return f"the function {obj.__module__}.{obj.__qualname__}"
    if inspect.isbuiltin(obj):
        return f"the builtin {getattr(obj, '__qualname__', obj)}"
    return article(type(obj).__name__)


def article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def from_standard_library(obj: Any) -> bool:
    module = (getattr(obj, "__module__", None) or "builtins").split(".")[0]
    return module in sys.stdlib_module_names or module == "builtins"


def plain_callable(obj: Any, arity: int, kind: str, names: tuple[str, ...] = ()) -> str | None:
    """Why `obj` is not a plug-in function or class taking `arity` positional arguments (None if
    it is); `names`: those arguments' names, for the message."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj)) or from_standard_library(obj):
        instance = not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isroutine(obj)
                        or inspect.ismodule(obj))
        if names and instance and not from_standard_library(obj):
            return (f"is {describe(obj)}, not {article(kind)}: give a function or class of your own that makes it, "
                    f"taking ({', '.join(names)})")
        return f"is {describe(obj)}, not {article(kind)} (a function or class of your own)"
    try:
        inspect.signature(obj).bind(*([None] * arity))
    except TypeError:
        listed = f" ({', '.join(names)})" if names else ""
        return (f"is {describe(obj)}, which does not take the {arity} positional arguments {article(kind)} "
                f"receives{listed}")
    except ValueError:  # no signature to inspect
        return f"is {describe(obj)}, not {article(kind)} (a function or class of your own)"
    return None


def _positional_names(fn: Any) -> tuple[str, ...]:
    """The names of `fn`'s required positional arguments (a class: its __init__'s), or ()."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ()
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                 and p.default is p.empty)


# libraries fedattack runs on: a function of theirs is never a user's label method or dataset
LIBRARIES = ("fedattack", "torch", "torchvision", "numpy", "scipy", "flwr", "flwr_datasets", "ray", "skimage",
             "sklearn", "opacus", "nevergrad", "datasets", "PIL", "matplotlib", "yaml", "rich")


def own_function(arity: int, kind: str) -> Callable[[Any], str | None]:
    """A registry's `accepts` for plug-ins that are plain functions of the user's own: as
    `plain_callable`, and not a function of the libraries fedattack runs on (`torch:save` takes
    two arguments too)."""
    def check(obj: Any) -> str | None:
        module = (getattr(obj, "__module__", None) or "").split(".")[0]
        if module in LIBRARIES:
            return f"is {describe(obj)}, not {article(kind)} of your own"
        return plain_callable(obj, arity, kind)

    return check


def _required_positional(fn: Any) -> int:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 0
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty for p in params)


def call_with_known(fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
    """Call fn with the subset of kwargs its signature accepts."""
    sig = inspect.signature(fn)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in sig.parameters})
