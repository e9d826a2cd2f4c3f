"""One exact-key registry used for encoders, fusion methods, adapters, data families and metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from polyvis.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps exact string keys to objects.

    An unknown key raises an error listing the valid keys; registering a key twice is an error
    (a silent overwrite would make the winner depend on import order).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

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
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; valid: {', '.join(sorted(self._items))}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)


_ALL: dict[str, Registry] = {}


def registry(kind: str) -> Registry:
    """The process-wide registry for `kind` (created on first use)."""
    if kind not in _ALL:
        _ALL[kind] = Registry(kind)
    return _ALL[kind]


def all_registries() -> dict[str, Registry]:
    return dict(_ALL)
