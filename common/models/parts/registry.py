"""Registries: one mapping name -> class per kind of model part (poolings, heads, losses).

A part is added by defining its class with the kind's decorator, and nothing else:

    @POOLINGS.register("median")
    class MedianPooling(Pooling):
        ...

Its name is then accepted in params (`train.models.<name>.scorer.pooling: median`), checked at load by
`ScorerParams` (common/config/model_params.py) through `check`, and built by `EssayScorer`. The registries hold the
classes in the order they were defined, which is the order error messages list them in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(MutableMapping[str, type[T]], Generic[T]):
    """Classes of one kind (`kind`: "pooling", "head", "loss") by name.

    `register(name)` decorates a class; a name taken twice is an error (one class would silently replace
    the other). `del registry[name]` takes a class out again (tests that register a toy part).
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: file the class under `name`."""

        def add(cls: type[T]) -> type[T]:
            self[name] = cls
            return cls

        return add

    def check(self, name: str) -> None:
        """ValueError naming the choices unless `name` is registered."""
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._classes)}")

    def build(self, name: str, *args: Any, **kwargs: Any) -> T:
        """An instance of the class called `name` (ValueError naming the choices if none), from `args`, `kwargs`."""
        self.check(name)
        return self._classes[name](*args, **kwargs)

    def __getitem__(self, name: str) -> type[T]:
        return self._classes[name]

    def __setitem__(self, name: str, cls: type[T]) -> None:
        if name in self._classes:
            raise ValueError(f"{self.kind} {name!r} is registered twice: by {self._classes[name].__qualname__} "
                             f"and by {cls.__qualname__}; give one of them another name")
        self._classes[name] = cls

    def __delitem__(self, name: str) -> None:
        del self._classes[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._classes)

    def __len__(self) -> int:
        return len(self._classes)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._classes)})"
