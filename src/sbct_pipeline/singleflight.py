"""Single flight: one load per key at a time, however many callers ask for it meanwhile.

The ingress caches token and template look-ups for a few seconds. When an entry expires
under load, every request in flight would otherwise miss it at once and query PostgreSQL
(64 connections, 64 identical queries, each waiting for a pool connection). With
:class:`Flights`, the first caller starts the load as a task and the others await the same
task; the load writes the cache once.

A load runs as its own task, so a caller that is cancelled (a client gone) does not cancel
it for the others. :meth:`Flights.forget` detaches loads started before an invalidation
(a token just deleted): callers arriving afterwards start a fresh load, and a detached load
can tell, with :meth:`Flights.current`, that it must not write the cache.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Flights(Generic[K, V]):
    """Loads in progress, by key."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Task[V]] = {}

    async def run(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The result of ``load()``, shared with every caller of ``key`` while it runs."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(load())
            self._running[key] = task
            task.add_done_callback(lambda t: self._landed(key, t))
        return await asyncio.shield(task)

    def current(self, key: K) -> bool:
        """Whether the calling task is the load registered for ``key`` (not forgotten)."""
        task = self._running.get(key)
        return task is not None and task is asyncio.current_task()

    def forget(self, match: Callable[[K], bool] | None = None) -> None:
        """Detach running loads (all, or those whose key matches): later callers start anew."""
        for key in [k for k in self._running if match is None or match(k)]:
            del self._running[key]

    def __len__(self) -> int:
        return len(self._running)

    def _landed(self, key: K, task: asyncio.Task[V]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        # Every waiter may have been cancelled: retrieve the outcome so that a failed load
        # is not reported as "exception never retrieved". The waiters still see it.
        if not task.cancelled():
            task.exception()
