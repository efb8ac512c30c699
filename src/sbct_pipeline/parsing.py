"""Parsing: a webhook body -> the job message to publish, in a helper process when large.

Decoding a 1,000-profile ``multi`` body, parsing its profiles and encoding the job is pure
Python CPU work (about 10 ms idle, far more on a busy machine). On the ingress's event loop,
or in a thread (which holds the GIL in 5 ms slices), it delays every Journey webhook that
arrives meanwhile. :class:`ParsePool` runs :func:`prepare` for bodies over
:data:`PROCESS_PARSE_BYTES` in ``SBCT_PARSE_PROCESSES`` helper processes instead: the event
loop only moves bytes to and from them, and the operating system shares the CPU between the
helpers and the loop rather than the GIL. Small bodies (every ``single`` of CleverTap's)
are prepared inline, where a process round trip would cost more than the parse.

:func:`prepare` is pure: bytes in, a :class:`Prepared` (with the encoded job) out. Its
errors cross the process boundary as ``(code, message)`` and are raised again as
:class:`BadRequest` in the ingress.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import signal
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from . import logs
from .codec import Job, parse_webhook
from .errors import BadRequest
from .httputil import decode_json

log = logs.get(__name__)

# Bodies above this go to a helper process (a 1,000-profile multi is ~100 KB; a Journey's
# single ~0.5 KB). Below it the round trip costs more than parsing in place.
PROCESS_PARSE_BYTES = 32 * 1024
MAX_REJECTIONS = 20


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the ingress needs from a parsed webhook: its answer and the job to publish."""

    target_id: int
    is_test: bool
    accepted: int
    rejected: int
    rejections: list[dict[str, Any]] = field(default_factory=list)
    template_keys: frozenset[str] = frozenset()
    payload: bytes | None = None  # the encoded Job; None without recipients


def prepare(body: bytes, *, request_id: str, app_id: str, received_at: float) -> Prepared:
    """Decode, parse and encode a webhook body; raises BadRequest naming the field."""
    hook = parse_webhook(decode_json(body))
    if hook.is_test:
        return Prepared(target_id=hook.target_id, is_test=True, accepted=0, rejected=0)
    payload = None
    if hook.recipients:
        payload = Job(request_id=request_id, app_id=app_id, target_id=hook.target_id,
                      recipients=hook.recipients, received_at=received_at).encode()
    return Prepared(target_id=hook.target_id, is_test=False, accepted=len(hook.recipients),
                    rejected=len(hook.rejected), rejections=hook.rejected[:MAX_REJECTIONS],
                    template_keys=frozenset(hook.template_keys), payload=payload)


def _prepare_remote(body: bytes, request_id: str, app_id: str,
                    received_at: float) -> Prepared | tuple[str, str]:
    # Runs in a helper process. BadRequest does not pickle with its code: send the parts.
    try:
        return prepare(body, request_id=request_id, app_id=app_id, received_at=received_at)
    except BadRequest as exc:
        return exc.code, exc.message


def _ready() -> bool:
    return True


def _init_helper() -> None:
    # Ctrl-C in a terminal reaches the whole process group: the ingress stops its helpers
    # itself, in order, so they need no traceback of their own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ParsePool:
    """``processes`` helper processes preparing large bodies; 0 = a thread of this process."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            # spawn, not fork: the ingress runs threads (asyncio.to_thread, aio-pika), and a
            # forked child of a threaded process can inherit a held lock.
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_helper)
        return self._executor

    async def start(self) -> None:
        """Start the helpers now, so the first large webhook does not wait for them.

        Otherwise they start at the first large body (what in-process test servers do).
        """
        if self.processes:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self._pool(), _ready)
                                   for _ in range(self.processes)))

    async def prepare(self, body: bytes, *, request_id: str, app_id: str,
                      received_at: float) -> Prepared:
        if len(body) <= PROCESS_PARSE_BYTES:
            return prepare(body, request_id=request_id, app_id=app_id,
                           received_at=received_at)
        if not self.processes:
            return await asyncio.to_thread(prepare, body, request_id=request_id,
                                           app_id=app_id, received_at=received_at)
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self._pool(), _prepare_remote, body, request_id,
                                             app_id, received_at)
        except BrokenProcessPool:
            # A helper died (OOM killer, kill -9): start new ones for the next request,
            # and do this one here.
            log.warning("parsing.pool_broken", processes=self.processes)
            self._executor = None
            return await asyncio.to_thread(prepare, body, request_id=request_id,
                                           app_id=app_id, received_at=received_at)
        if isinstance(out, tuple):
            raise BadRequest(out[1], code=out[0])
        return out

    async def close(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, wait=True, cancel_futures=True)
