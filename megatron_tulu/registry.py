"""``Registry``: name -> pure function, for the pieces a config field selects by name (policy losses, advantage
estimators), as verl's core_algos registers them."""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(dict):
    """A dict of ``name -> function`` (docs and tests index it) whose ``register`` decorator refuses a name twice."""

    def __init__(self, what: str):
        super().__init__()
        self.what = what
        """What the entries are, for messages (e.g. ``policy loss``)."""

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: make the function the entry ``name``."""

        def add(fn: F) -> F:
            if name in self:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self[name] = fn
            return fn

        return add
