"""The daemon's scheduling: one APScheduler job per mailbox, and poll requests (issue 15).

The first poll of every mailbox starts at once (with jitter). Poll requests: a push notification
calls ``Scheduler.request_poll(name)``, which is

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

A module of its own so that ``ews-listener once``, which schedules nothing, does not import
APScheduler (its import scans every installed distribution's entry points).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor as JobExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from listener.service import MailboxRunner

__all__ = ["Scheduler"]

log = structlog.get_logger("listener.service")


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

    def every(self, seconds: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` every ``seconds`` on the scheduler's workers (after ``start``)."""
        self._scheduler.add_job(fn, IntervalTrigger(seconds=seconds), coalesce=True)

    def mailboxes(self) -> list[str]:
        """The mailboxes scheduled now (with several replicas: those whose lease is ours)."""
        return list(self._runners)

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
