"""Tasks: periodic background loops that stop on request, never by cancellation alone.

A loop stopped with ``Task.cancel()`` while a library call swallows or converts the
cancellation (aio-pika's channel calls inside ``asyncio.timeout`` can) keeps running, and
whoever awaits it hangs. :class:`Periodic` loops check a stop event between rounds instead,
and fall back to cancel only after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from . import logs
from .errors import Unavailable

log = logs.get(__name__)

T = TypeVar("T")


async def until_up(what: str, connect: Callable[[], Awaitable[T]], wait_s: float) -> T:
    """``connect()``, retried while it raises :class:`Unavailable`, for up to ``wait_s``.

    Processes start in any order (compose, Kubernetes, a restart during a database
    failover): a dependency that answers a few seconds late must not kill the process. Past
    ``wait_s`` the last error is raised, and it names what could not be reached.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    delay = 0.5
    while True:
        try:
            return await connect()
        except Unavailable as exc:
            left = deadline - loop.time()
            if left <= 0:
                raise
            log.warning("startup.waiting", dependency=what, error=str(exc),
                        retry_in_s=round(min(delay, left), 2), gives_up_in_s=round(left, 1))
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


class Periodic:
    """Runs ``fn`` every ``interval`` seconds until :meth:`stop`."""

    def __init__(self, name: str, fn: Callable[[], Awaitable[object]], interval: float) -> None:
        self.name = name
        self.fn = fn
        self.interval = interval
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> Periodic:
        self._task = asyncio.create_task(self._run(), name=self.name)
        return self

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval):
                    await self._stop.wait()
            if self._stop.is_set():
                break
            try:
                await self.fn()
            except Unavailable as exc:
                log.warning("task.round_failed", task=self.name, error=str(exc))
            except Exception:
                log.exception("task.round_crashed", task=self.name)

    async def stop(self, grace: float = 5.0) -> None:
        self._stop.set()
        if self._task is None:
            return
        done, _ = await asyncio.wait({self._task}, timeout=grace)
        if not done:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=grace)
