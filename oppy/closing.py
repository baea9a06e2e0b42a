"""A set of open things (connections, links) that says when the last of them has closed.

After a clean stop a program running oppy on its own reactor must find nothing of it left: the link pool, the
SOCKS service and the control port each keep their open connections in an :class:`OpenSet` and hand out
``when_empty()`` Deferreds that fire once every one has really closed (its connectionLost has run).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from twisted.internet import defer

__all__ = ["OpenSet"]

T = TypeVar("T")


class OpenSet(Generic[T]):
    """``add`` what opens, ``discard`` what closed; ``when_empty()`` fires once nothing is left."""

    def __init__(self) -> None:
        self._open: set[T] = set()
        self._waiters: list[defer.Deferred] = []

    def add(self, item: T) -> None:
        self._open.add(item)

    def discard(self, item: T) -> None:
        self._open.discard(item)
        if not self._open:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_empty(self) -> defer.Deferred:
        """A Deferred firing once nothing is open (now, if nothing is)."""
        if not self._open:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def __contains__(self, item: object) -> bool:
        return item in self._open

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._open))
