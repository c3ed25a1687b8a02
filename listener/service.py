"""Running the polls of one mailbox (``MailboxRunner``): per-mailbox back-off, and a poll asked
for while one runs is followed by exactly one more.

A failing mailbox (bad credential, missing mailbox, denied impersonation, throttling) backs off on
its own and never stops the others. The daemon's scheduling (APScheduler, poll requests of push
notifications) is ``listener.scheduler``, which ``once`` never imports.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import structlog

from listener.errors import ListenerError, SourceError, TokenError
from listener.poller import Poller, PollResult
from listener.store import LeaseLost

__all__ = ["MailboxRunner", "poll_all"]

log = structlog.get_logger("listener.service")

# A mailbox that fails waits min(interval * 2^(failures-1), cap) before its next poll; the cap is
# longer when the error says retrying soon cannot help (missing mailbox, denied impersonation).
_TRANSIENT_CAP = 300.0
_PERMANENT_CAP = 3600.0


@dataclass
class MailboxRunner:
    """Runs the polls of one mailbox and remembers how it is doing."""

    poller: Poller
    interval: float
    on_result: Callable[[PollResult, float], None] = lambda result, seconds: None
    failures: int = 0
    not_before: float = 0.0
    last_result: PollResult | None = None
    # Entered around each poll: with several replicas, the mailbox's lease (listener.cluster).
    guard: Callable[[], AbstractContextManager[object]] = nullcontext
    # Set at shutdown (``App.stop``): a poll asked for during the last one is not started then.
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Guards ``_again`` together with taking and releasing ``_lock``, so a request that finds
    # the poll running is either seen by its loop or finds the lock free: never neither.
    _again_lock: threading.Lock = field(default_factory=threading.Lock)
    _again: bool = False

    @property
    def name(self) -> str:
        return self.poller.name

    def run(self, *, force: bool = False) -> PollResult | None:
        """One poll, unless the mailbox is backing off (``force`` ignores the back-off).

        Called while a poll runs, it returns None at once and that poll is followed by exactly
        one more: the running poll may already have read the folder the caller saw change.
        """
        if not force and self.backing_off():
            return None
        with self._again_lock:
            if not self._lock.acquire(blocking=False):
                self._again = True  # the running poll repeats once (see the loop below)
                return None
            self._again = False
        result: PollResult | None = None
        try:
            while True:
                result = self._timed_poll()
                with self._again_lock:
                    # Back-off first: a follow-up during it waits (the scheduler asks again
                    # when it ends, see ``wants_poll``), as any request during a back-off does.
                    if not self._again or self.backing_off() or self.stop.is_set():
                        break
                    self._again = False
        finally:
            with self._again_lock:
                self._lock.release()
        return result

    @property
    def wants_poll(self) -> bool:
        """A poll was asked for during the last one and has not run yet (it backs off)."""
        with self._again_lock:
            return self._again

    def backing_off(self) -> bool:
        return time.monotonic() < self.not_before

    def _timed_poll(self) -> PollResult:
        started = time.monotonic()
        result = self._poll()
        self.last_result = result
        self.on_result(result, time.monotonic() - started)
        return result

    def _poll(self) -> PollResult:
        try:
            with self.guard():
                result = self.poller.poll()
        except LeaseLost as e:
            # Another replica owns the mailbox now: not a failure to back off from (issue 16).
            result = PollResult(self.name)
            result.error, result.error_code = str(e), "LeaseLost"
            log.warning("mailbox.lease_lost", mailbox=self.name, error=str(e))
            return result
        except Exception as e:
            result = PollResult(self.name)
            self._failed(result, e)
            return result
        self.failures = 0
        self.not_before = 0.0
        return result

    def _failed(self, result: PollResult, error: BaseException) -> None:
        self.failures += 1
        transient = True
        back_off: float | None = None
        code = type(error).__name__
        if isinstance(error, SourceError):
            transient, back_off, code = error.transient, error.back_off, error.code or code
        elif isinstance(error, TokenError):
            code = f"TokenError:{error.aadsts or error.error or 'unavailable'}"
            transient = error.transient
        # A transient failure backs off in proportion to the mailbox's own rhythm: a mailbox
        # polled every few seconds is not parked for minutes after a burst of 503s.
        cap = min(_TRANSIENT_CAP, max(30.0, 16 * self.interval)) if transient else _PERMANENT_CAP
        delay = min(self.interval * 2 ** (self.failures - 1), cap)
        if back_off:
            delay = max(delay, back_off)
        delay *= 1 + random.uniform(0, 0.1)
        self.not_before = time.monotonic() + delay
        result.error = str(error)
        result.error_code = code
        log.warning(
            "mailbox.poll_failed",
            mailbox=self.name,
            error=str(error),
            error_code=code,
            transient=transient,
            failures=self.failures,
            next_attempt_in=round(delay, 1),
            exc_info=not isinstance(error, ListenerError),
        )


def poll_all(runners: Iterable[MailboxRunner], *, max_workers: int) -> Mapping[str, PollResult]:
    """Poll every mailbox once, concurrently (``ews-listener once``)."""
    items = list(runners)
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(items) or 1))) as pool:
        results = list(pool.map(lambda r: r.run(force=True), items))
    return {r.name: res or PollResult(r.name) for r, res in zip(items, results, strict=True)}
