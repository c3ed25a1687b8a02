"""The daemon: one scheduled job per mailbox, per-mailbox back-off, ordered shutdown.

A failing mailbox (bad credential, missing mailbox, denied impersonation, throttling) backs off on
its own and never stops the others; the first poll of every mailbox starts at once (with jitter).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from listener.errors import ListenerError, SourceError, TokenError
from listener.poller import Poller, PollResult

__all__ = ["MailboxRunner", "Scheduler"]

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
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.poller.name

    def run(self, *, force: bool = False) -> PollResult | None:
        """One poll, unless the mailbox is backing off (``force`` ignores the back-off)."""
        if not force and time.monotonic() < self.not_before:
            return None
        if not self._lock.acquire(blocking=False):
            return None  # the previous poll is still running
        started = time.monotonic()
        try:
            result = self._poll()
        finally:
            self._lock.release()
        self.last_result = result
        self.on_result(result, time.monotonic() - started)
        return result

    def _poll(self) -> PollResult:
        try:
            result = self.poller.poll()
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


class Scheduler:
    """APScheduler 3 with one job per mailbox: jitter, ``max_instances=1``, coalescing.

    APScheduler is imported here, not with the module: ``once`` does not schedule, and the import
    scans every installed distribution's entry points (~0.1-0.2 s of its start-up)."""

    def __init__(self, *, max_workers: int, jitter: float) -> None:
        from apscheduler.executors.pool import (  # noqa: PLC0415 - see the class docstring
            ThreadPoolExecutor as JobExecutor,
        )
        from apscheduler.schedulers.background import (  # noqa: PLC0415
            BackgroundScheduler,
        )

        self._scheduler = BackgroundScheduler(
            executors={"default": JobExecutor(max_workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._jitter = jitter
        self._running: set[str] = set()
        self._cond = threading.Condition()
        self.heartbeat = time.monotonic()

    def add(self, runner: MailboxRunner, *, cron: str | None = None) -> None:
        from apscheduler.triggers.cron import CronTrigger  # noqa: PLC0415 - see the class
        from apscheduler.triggers.interval import IntervalTrigger  # noqa: PLC0415

        trigger: Any
        if cron:
            trigger = CronTrigger.from_crontab(cron, timezone=UTC)
            trigger.jitter = int(self._jitter) or None
        else:
            # No trigger jitter: APScheduler 3 adds it to the previous, already jittered fire
            # time, so intervals drift longer (interval + jitter/2 on average). A random first
            # run spreads the mailboxes instead, and each keeps its exact interval after that.
            trigger = IntervalTrigger(seconds=runner.interval)
        offset = random.uniform(0, min(self._jitter, runner.interval))
        first = datetime.now(UTC) + timedelta(seconds=offset)
        self._scheduler.add_job(
            self._job,
            trigger,
            args=(runner,),
            id=runner.name,
            name=f"poll {runner.name}",
            next_run_time=first,
        )

    def _job(self, runner: MailboxRunner) -> None:
        with self._cond:
            self._running.add(runner.name)
        try:
            runner.run()
        finally:
            with self._cond:
                self._running.discard(runner.name)
                self._cond.notify_all()
            self.heartbeat = time.monotonic()

    def start(self) -> None:
        from apscheduler.triggers.interval import IntervalTrigger  # noqa: PLC0415 - see the class

        self._scheduler.start()
        # The scheduler's own thread proves it is alive between polls.
        self._scheduler.add_job(self._beat, IntervalTrigger(seconds=5), id="__heartbeat__")

    def _beat(self) -> None:
        self.heartbeat = time.monotonic()

    def stop_scheduling(self) -> None:
        """Stop starting new polls; polls already running go on."""
        if self._scheduler.running:
            self._scheduler.pause()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no poll runs; False when ``timeout`` ran out first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def running(self) -> list[str]:
        with self._cond:
            return sorted(self._running)

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)


def poll_all(runners: Iterable[MailboxRunner], *, max_workers: int) -> Mapping[str, PollResult]:
    """Poll every mailbox once, concurrently (``ews-listener once``)."""
    items = list(runners)
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(items) or 1))) as pool:
        results = list(pool.map(lambda r: r.run(force=True), items))
    return {r.name: res or PollResult(r.name) for r, res in zip(items, results, strict=True)}
