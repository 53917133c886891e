"""A small generic registry, and its instances: one per kind of plugin.

Plugins register by decorator, in their own module::

    @METHODS.register("dpsgd")
    class DPSGD(Method): ...

A registry imports its plugin package on first lookup, so `dpbench list methods` and
`METHODS.get("dpsgd")` see every registered class without eager star-imports elsewhere.
The instances are declared here, apart from the base classes, so that the run spec can ask a
method for its defaults without importing the methods (and torch) until a name is looked up.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Callable, Generic, Iterator, TypeVar

from dpbench.errors import DpbenchError

T = TypeVar("T")


class UnknownNameError(KeyError, DpbenchError):
    """An unknown registry name. A KeyError for callers, a one-line CLI error for users."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0])


class Registry(Generic[T]):
    """`base` is the class every item must subclass, or its "module:Class" name: the registries
    below name it so, and importing them stays cheap."""

    def __init__(self, kind: str, base: type | str | None = None, plugins: str | None = None):
        self.kind = kind
        self._base = base
        self.plugins = plugins
        self._items: dict[str, T] = {}
        self._loaded = plugins is None

    @property
    def base(self) -> type | None:
        if isinstance(self._base, str):  # the base's module has run by the time anything registers
            module, _, attribute = self._base.partition(":")
            self._base = getattr(importlib.import_module(module), attribute)
        return self._base

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
                raise TypeError(f"{self.kind} {name!r} must subclass {self.base.__name__}")
            self._items[name] = obj
            if isinstance(obj, type):
                obj.name = name  # the decorator is the one place the name is written
            return obj

        return decorator

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.plugins)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}.") from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


METHODS: Registry = Registry("method", base="dpbench.methods.base:Method", plugins="dpbench.methods")
TASKS: Registry = Registry("task", base="dpbench.tasks.base:Task", plugins="dpbench.tasks")
ATTACKS: Registry = Registry("attack", base="dpbench.attacks.base:Attack", plugins="dpbench.attacks")
MODELS: Registry = Registry("model", base="dpbench.models.loading:ModelLoader", plugins="dpbench.models.loading")
UNLEARNERS: Registry = Registry(
    "unlearning method", base="dpbench.unlearning.base:Unlearner", plugins="dpbench.unlearning.methods"
)
