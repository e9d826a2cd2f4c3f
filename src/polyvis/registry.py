"""One exact-key registry used for encoders, fusion methods, adapters, data families and metrics.

A registry knows the modules that fill it and imports them (by name) the first time it is looked
up or listed, so a lower layer (config validation, `polyvis list`) can use a registry without
importing the layer whose modules register into it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from polyvis.errors import RegistryError

T = TypeVar("T")

# kind -> the modules whose import registers that kind's entries
PROVIDERS: dict[str, tuple[str, ...]] = {
    "adapter": ("polyvis.models.adapters",),
    "converter": ("polyvis.data.converters",),
    "family": ("polyvis.data.synthetic",),
    "fusion": ("polyvis.models.fusion",),
    "metric": ("polyvis.eval.metrics",),
}


class Registry(Generic[T]):
    """Maps exact string keys to objects.

    An unknown key raises an error listing the valid keys; registering a key twice is an error
    (a silent overwrite would make the winner depend on import order).
    """

    def __init__(self, kind: str, providers: tuple[str, ...] = ()):
        self.kind = kind
        self.providers = tuple(providers)
        self._items: dict[str, T] = {}
        self._discovered = not self.providers

    def discover(self) -> None:
        """Import the modules that fill this registry (once; a failed import is retried)."""
        if self._discovered:
            return
        # set first: a provider that looks itself up while importing must not recurse
        self._discovered = True
        try:
            for module in self.providers:
                importlib.import_module(module)
        except BaseException:
            self._discovered = False
            raise

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        self.discover()
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self.discover()
        return iter(sorted(self._items))

    def __len__(self) -> int:
        self.discover()
        return len(self._items)

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._items)


_ALL: dict[str, Registry] = {}


def registry(kind: str) -> Registry:
    """The process-wide registry for `kind` (created on first use)."""
    if kind not in _ALL:
        _ALL[kind] = Registry(kind, PROVIDERS.get(kind, ()))
    return _ALL[kind]


def all_registries() -> dict[str, Registry]:
    return dict(_ALL)


def load_all_registries() -> dict[str, Registry]:
    """Every known registry, filled: each provider imported, then the registries returned."""
    for kind in PROVIDERS:
        reg = registry(kind)
        try:
            reg.discover()
        except ImportError as err:
            # an optional third-party dependency is missing: that registry lists what it has
            if err.name is None or err.name.split(".")[0] == "polyvis":
                raise
    return all_registries()
