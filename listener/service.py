"""The daemon: one scheduled job per mailbox, per-mailbox back-off, ordered shutdown.

A failing mailbox (bad credential, missing mailbox, denied impersonation, throttling) backs off on
its own and never stops the others; the first poll of every mailbox starts at once (with jitter).

Poll requests (issue 15): a push notification calls ``Scheduler.request_poll(name)``, which is

- *debounced*: the first request schedules a poll ``debounce`` seconds later, and every request
  until then joins it, so a burst of notifications costs one poll;
- *never lost mid-poll*: a poll requested while one runs is followed by exactly one more
  (``MailboxRunner.run``), since the running poll may have read the folder before the new mail;
- *polite to a throttled server*: a request while the mailbox backs off after a failure waits
  for the back-off to end and then costs one poll. A push must not hammer a server that said
  "later"; the poll at the end of the back-off still answers every request made during it.

The interval job stays as the safety net: while the mailbox's channel is connected it runs every
``max(interval, healthy_interval)`` seconds, and at the configured interval again once degraded
(``Scheduler.set_healthy``).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from listener.errors import ListenerError, SourceError, TokenError
from listener.poller import Poller, PollResult
from listener.store import LeaseLost

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


class Scheduler:
    """APScheduler 3 with one job per mailbox: jitter, ``max_instances=1``, coalescing; and the
    poll requests of push notifications (``request_poll``), one date job per mailbox."""

    def __init__(
        self,
        *,
        max_workers: int,
        jitter: float,
        debounce: float = 0.25,
        healthy_interval: float | None = None,
    ) -> None:
        self._scheduler = BackgroundScheduler(
            executors={"default": JobExecutor(max_workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        self._jitter = jitter
        self.debounce = debounce
        self.healthy_interval = healthy_interval
        self._runners: dict[str, MailboxRunner] = {}
        self._cron: set[str] = set()
        self._healthy: dict[str, bool] = {}
        # A Counter, not a set: a request's job may enter ``_job`` while the interval job's poll
        # runs (it returns at once, asking that poll to repeat) and must not mark the mailbox
        # idle when it leaves, or ``wait_idle`` would let shutdown close what a poll still uses.
        self._running: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._requests = threading.Lock()
        self._pending: set[str] = set()  # mailboxes with a requested poll not started yet
        self._sequence = 0
        self.served = 0  # requested polls whose job has run (for tests)
        self.heartbeat = time.monotonic()
        #: Called with (mailbox, outcome) per request: "scheduled", "coalesced", "ignored".
        self.on_request: Callable[[str, str], None] = lambda mailbox, outcome: None

    def add(self, runner: MailboxRunner, *, cron: str | None = None) -> None:
        trigger: Any
        if cron:
            trigger = CronTrigger.from_crontab(cron, timezone=UTC)
            trigger.jitter = int(self._jitter) or None
            self._cron.add(runner.name)
        else:
            # No trigger jitter: APScheduler 3 adds it to the previous, already jittered fire
            # time, so intervals drift longer (interval + jitter/2 on average). A random first
            # run spreads the mailboxes instead, and each keeps its exact interval after that.
            trigger = IntervalTrigger(seconds=runner.interval)
        self._runners[runner.name] = runner
        offset = random.uniform(0, min(self._jitter, runner.interval))
        first = datetime.now(UTC) + timedelta(seconds=offset)
        self._scheduler.add_job(
            self._job,
            trigger,
            args=(runner,),
            id=runner.name,
            name=f"poll {runner.name}",
            next_run_time=first,
            replace_existing=True,
        )

    def remove(self, name: str) -> None:
        """Stop scheduling the polls of mailbox ``name`` (one running now goes on); a poll
        requested for it from now on is ignored until it is added again."""
        self._runners.pop(name, None)
        self._healthy.pop(name, None)
        with suppress(JobLookupError):
            self._scheduler.remove_job(name)

    # -- poll requests (push notifications) -------------------------------------------------

    def request_poll(self, name: str) -> None:
        """Ask for a poll of mailbox ``name`` soon; never blocks, never raises (a channel's
        thread calls it). Requests within ``debounce`` seconds of the first cost one poll."""
        runner = self._runners.get(name)
        if runner is None or not self._scheduler.running:
            self.on_request(name, "ignored")
            return
        # The back-off's end in wall-clock time, as APScheduler's run dates are.
        delay = max(self.debounce, runner.not_before - time.monotonic())
        when = datetime.now(UTC) + timedelta(seconds=delay)
        with self._requests:
            if name in self._pending:
                self.on_request(name, "coalesced")  # the pending one will see this change too
                return
            self._pending.add(name)
            self._sequence += 1
            # An id of its own per request: APScheduler counts running instances by job id, and
            # a request made while the previous request's poll runs must not be refused as a
            # second instance of that job (max_instances=1): that would lose it.
            self._scheduler.add_job(
                self._requested,
                DateTrigger(run_date=when, timezone=UTC),
                args=(runner,),
                id=f"{name}#request{self._sequence}",
                name=f"requested poll {name}",
            )
        self.on_request(name, "scheduled")

    def _requested(self, runner: MailboxRunner) -> None:
        with self._requests:
            self._pending.discard(runner.name)  # from now on a request needs a poll of its own
        try:
            if self._runners.get(runner.name) is not runner:
                return  # removed since (another replica owns it now): not ours to poll
            if runner.backing_off():
                # It began backing off after the request was made: wait for its end.
                self.request_poll(runner.name)
                return
            self._job(runner)
        finally:
            with self._requests:
                self.served += 1

    def set_healthy(self, name: str, healthy: bool) -> None:
        """Whether mailbox ``name``'s notification channel is connected: the interval job
        then runs every ``max(interval, healthy_interval)`` seconds, else every interval."""
        runner = self._runners.get(name)
        if runner is None or name in self._cron or self.healthy_interval is None:
            return
        if self._healthy.get(name, False) == healthy:
            return
        self._healthy[name] = healthy
        seconds = max(runner.interval, self.healthy_interval) if healthy else runner.interval
        try:
            self._scheduler.reschedule_job(name, trigger=IntervalTrigger(seconds=seconds))
        except JobLookupError:
            return
        log.info("mailbox.safety_net_interval", mailbox=name, seconds=seconds, healthy=healthy)

    def interval_of(self, name: str) -> float | None:
        """The interval job's current period (None for a cron mailbox or an unknown one)."""
        job = self._scheduler.get_job(name)
        trigger = getattr(job, "trigger", None)
        if not isinstance(trigger, IntervalTrigger):
            return None
        return float(trigger.interval.total_seconds())

    # -- the jobs -----------------------------------------------------------------------------

    def _job(self, runner: MailboxRunner) -> None:
        with self._cond:
            self._running[runner.name] += 1
        result = None
        try:
            result = runner.run()
        finally:
            with self._cond:
                self._running[runner.name] -= 1
                if self._running[runner.name] <= 0:
                    del self._running[runner.name]
                self._cond.notify_all()
            self.heartbeat = time.monotonic()
        if result is not None and runner.wants_poll:
            # Asked for during a poll that failed: the mailbox backs off, and then polls. (Only
            # the job that ran the poll asks: one that found it running just left its mark.)
            self.request_poll(runner.name)

    def start(self) -> None:
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
