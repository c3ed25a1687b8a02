"""Handing one batch over concurrently, bounded three ways, ``ordered`` messages one at a time.

Threads, not asyncio: a handler is a synchronous callable (a Python function, an httpx webhook
call, a subprocess), and the content loaders it may call (``Message.mime()``, attachments) go
through exchangelib, which is synchronous too. A thread per hand-over in flight runs such code
unchanged, and the GIL is released while it waits on the network, which is what it mostly does.

The bounds, from the outside in:

- **per process**: one ``HandlerPool`` of ``service.handler_workers`` threads that every mailbox
  shares, so a thousand mailboxes do not mean a thousand threads per batch;
- **per mailbox**: at most ``handler_concurrency`` of its messages in flight: the poll submits no
  more (``hand_over``). A slow handler on one mailbox therefore holds at most that many of the
  pool's threads, and the other mailboxes keep the rest (``tests/poller/test_concurrency.py``);
- **per handler**: ``max_concurrency`` calls of one handler at once across all mailboxes (a
  receiver that takes only so many connections), a semaphore the worker holds around the call. A
  worker waiting for it holds its thread; no deadlock, as a worker holds one such semaphore at a
  time.

A message's own handlers run one after the other, in route order, on one worker: concurrency is
between messages. Messages of an ``ordered`` mailbox or route go through a single lane: the next
starts when the previous has finished, in the order the sync listed them (the order the folder
received them); the rest of the batch runs beside that lane. A batch is handed over completely
before the next one starts, so the order holds across batches. A failed message parked for a
retry comes back later, out of order: ``ordered`` orders attempts, it does not hold the mailbox
up behind a failing message.

Nothing here decides a message's fate or touches the store: ``run`` only calls handlers and
returns their ``Outcome``s; the poll books each one on its own thread as it finishes
(``on_done``), so what the handlers did is in the poll's records at once (``Poller.flush``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from listener.abc import Handler, PendingEntry
from listener.errors import PermanentError
from listener.model import Message
from listener.pipeline.fate import Outcome, retry_after_of

__all__ = ["DEFAULT_HANDLER_WORKERS", "HandlerPool", "Job", "hand_over", "run_handlers"]

log = structlog.get_logger("listener.poller")

T = TypeVar("T")

# service.handler_workers: four mailboxes at the default handler_concurrency of 8 at full speed.
DEFAULT_HANDLER_WORKERS = 32


class HandlerPool:
    """The threads hand-overs run on, shared by every mailbox of a process, and the
    per-handler ``max_concurrency`` limits."""

    def __init__(
        self, workers: int = DEFAULT_HANDLER_WORKERS, limits: Mapping[str, int] | None = None
    ) -> None:
        self.workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hand-over")
        self._limits = {n: threading.BoundedSemaphore(c) for n, c in (limits or {}).items()}

    def submit(self, fn: Callable[..., T], /, *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on a worker, in a copy of the caller's context: the worker's log
        lines carry the poll's ``mailbox``, ``credential`` and ``poll_id``."""
        return self._executor.submit(contextvars.copy_context().run, fn, *args)

    @contextlib.contextmanager
    def limit(self, handler: str) -> Iterator[None]:
        """Hold one of ``handler``'s ``max_concurrency`` slots (none: unbounded)."""
        slot = self._limits.get(handler)
        if slot is None:
            yield
            return
        with slot:
            yield

    def close(self) -> None:
        """No new hand-over starts; those running finish on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, kw_only=True)
class Job:
    """One message to hand over, to the handlers it still needs."""

    message: Message
    handlers: tuple[str, ...]
    previous: PendingEntry | None  # the pending entry of an earlier attempt
    ordered: bool  # in the batch's ordered lane


def run_handlers(job: Job, handlers: Mapping[str, Handler], pool: HandlerPool) -> list[Outcome]:
    """Call each of the job's handlers in turn (on a worker); what each did, never raising."""
    outcomes: list[Outcome] = []
    for name in job.handlers:
        with pool.limit(name):
            started = time.monotonic()
            try:
                handlers[name](job.message)
            except PermanentError as e:
                error = f"{type(e).__name__}: {e}"
                log.warning("handler.permanent_failure", handler=name, error=error)
                outcome = Outcome(handler=name, error=error, permanent=True)
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                log.warning("handler.transient_failure", handler=name, error=error, exc_info=True)
                # A webhook's Retry-After (429/503) is a floor for the next attempt.
                outcome = Outcome(handler=name, error=error, retry_after=retry_after_of(e))
            else:
                outcome = Outcome(handler=name)
            seconds = time.monotonic() - started
        outcomes.append(dataclasses.replace(outcome, seconds=seconds))
    return outcomes


def hand_over(
    jobs: Sequence[Job],
    *,
    run: Callable[[Job], list[Outcome]],
    pool: HandlerPool,
    limit: int,
    stop: threading.Event,
    on_done: Callable[[Job, list[Outcome]], None],
) -> list[Job]:
    """Run ``jobs`` on ``pool``, at most ``limit`` at a time, the ordered ones one at a time in
    their order; ``on_done`` books each on this thread as it finishes. Returns the jobs not
    started: a stop, or an exception from ``on_done``, starts no new one, those in flight finish
    and are booked, and then that exception is raised."""
    lane = deque(j for j in jobs if j.ordered)
    free = deque(j for j in jobs if not j.ordered)
    in_flight: dict[Future[list[Outcome]], Job] = {}
    lane_busy = False
    error: BaseException | None = None
    while True:
        while error is None and not stop.is_set() and len(in_flight) < limit:
            if lane and not lane_busy:
                job, lane_busy = lane.popleft(), True
            elif free:
                job = free.popleft()
            else:
                break
            in_flight[pool.submit(run, job)] = job
        if not in_flight:
            break
        finished, _ = wait(in_flight, return_when=FIRST_COMPLETED)
        for future in finished:
            job = in_flight.pop(future)
            lane_busy = lane_busy and not job.ordered
            try:
                on_done(job, future.result())
            except BaseException as e:
                error = error or e
    if error is not None:
        raise error
    return [*lane, *free]
