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

Urgent first: the polls that are due wait for one of ``max_workers`` workers in one queue, and a
notification's poll (``request_poll(name)``, urgent) goes ahead of the rest (interval polls, and
the *catch-up* polls a channel asks for after (re)subscribing, ``urgent=False``) that have waited
less than ``URGENT_HEAD_START`` seconds. With 1,000 EWS mailboxes the daemon's start is 1,000
first polls and 1,000 catch-up polls; in one first-in-first-out queue a message delivered then
waited behind all of them (benchmarks/README.md, "1,000 mailboxes": p95 11.7 s on a loaded
machine). The head start is bounded so that a steady stream of notifications cannot starve the
safety net: a poll that has waited ``URGENT_HEAD_START`` seconds goes before any newer one.

A module of its own so that ``ews-listener once``, which schedules nothing, does not import
APScheduler (its import scans every installed distribution's entry points).
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.executors.pool import BasePoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from listener.service import MailboxRunner

__all__ = ["URGENT_HEAD_START", "Scheduler"]

log = structlog.get_logger("listener.service")

#: Seconds an urgent poll (a notification's) goes ahead of the other waiting ones.
URGENT_HEAD_START = 30.0
_HEARTBEAT = "__heartbeat__"


class _Workers:
    """A pool of ``workers`` threads with the ``submit`` / ``shutdown`` of
    ``concurrent.futures`` that APScheduler's pool executors use, whose queue is ordered by
    the time a job was submitted minus its head start (``head_start(job)`` seconds), first in
    first out among equals."""

    def __init__(self, workers: int, head_start: Callable[[Any], float]) -> None:
        self._workers = max(1, workers)
        self._head_start = head_start
        self._cond = threading.Condition()
        # [order key, sequence, job id, future, fn, args]: a list, so promote() can rekey it.
        self._queue: list[list[Any]] = []
        self._sequence = itertools.count()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        job = args[0]  # apscheduler.executors.base.run_job(job, jobstore_alias, run_times, ...)
        future: Future[Any] = Future()
        key = time.monotonic() - self._head_start(job)
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler's workers are shut down")
            heapq.heappush(self._queue, [key, next(self._sequence), job.id, future, fn, args])
            if len(self._threads) < self._workers:
                worker = threading.Thread(
                    target=self._work, name=f"poll-worker-{len(self._threads)}", daemon=True
                )
                self._threads.append(worker)
                worker.start()
            self._cond.notify()
        return future

    def promote(self, job_id: str, seconds: float) -> bool:
        """Give the waiting job ``job_id`` a head start of ``seconds`` (if it is not ahead
        already); False when it is not waiting (not submitted yet, or started)."""
        with self._cond:
            for entry in self._queue:
                if entry[2] == job_id:
                    entry[0] = min(entry[0], time.monotonic() - seconds)
                    heapq.heapify(self._queue)
                    return True
        return False

    def waiting(self) -> int:
        """Jobs due and waiting for a free worker."""
        with self._cond:
            return len(self._queue)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                _, _, _, future, fn, args = heapq.heappop(self._queue)
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as error:  # as concurrent.futures does: the future carries it
                future.set_exception(error)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True) -> None:
        """Start nothing more (what waits is dropped: the scheduler stops scheduling and waits
        for running polls before it shuts down, so a poll never starts after the sources
        close); ``wait``: join the workers."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


class _RankedExecutor(BasePoolExecutor):  # type: ignore[misc]
    """APScheduler's thread pool executor on ``_Workers`` (urgent jobs first)."""

    def __init__(self, pool: _Workers) -> None:
        super().__init__(pool)


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
        urgent_head_start: float = URGENT_HEAD_START,
    ) -> None:
        self.urgent_head_start = urgent_head_start
        self._workers = _Workers(max_workers, self._head_start)
        self._scheduler = BackgroundScheduler(
            executors={"default": _RankedExecutor(self._workers)},
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
        # Mailboxes with a requested poll not started yet: its job id, and whether it is urgent.
        self._pending: dict[str, tuple[str, bool]] = {}
        self._sequence = 0
        self.served = 0  # requested polls whose job has run (for tests)
        self.heartbeat = time.monotonic()
        #: Called with (mailbox, outcome) per request: "scheduled", "coalesced", "ignored".
        #: (A catch-up request joining a pending one is "coalesced" too.)
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

    def request_poll(self, name: str, *, urgent: bool = True) -> None:
        """Ask for a poll of mailbox ``name`` soon; never blocks, never raises (a channel's
        thread calls it). Requests within ``debounce`` seconds of the first cost one poll.

        ``urgent`` (a notification: mail is there): the poll goes ahead of the waiting interval
        and catch-up polls. ``urgent=False`` (a catch-up: a subscription began, or a channel
        broke, and mail may have come meanwhile): it waits its turn among them. An urgent
        request that joins a pending catch-up makes that one urgent."""
        runner = self._runners.get(name)
        if runner is None or not self._scheduler.running:
            self.on_request(name, "ignored")
            return
        # The back-off's end in wall-clock time, as APScheduler's run dates are.
        delay = max(self.debounce, runner.not_before - time.monotonic())
        when = datetime.now(UTC) + timedelta(seconds=delay)
        with self._requests:
            pending = self._pending.get(name)
            if pending is not None:
                job_id, was_urgent = pending
                if urgent and not was_urgent:
                    self._pending[name] = (job_id, True)
                    self._promote(job_id)
                self.on_request(name, "coalesced")  # the pending one will see this change too
                return
            self._sequence += 1
            # An id of its own per request: APScheduler counts running instances by job id, and
            # a request made while the previous request's poll runs must not be refused as a
            # second instance of that job (max_instances=1): that would lose it.
            job_id = f"{name}#request{self._sequence}"
            self._pending[name] = (job_id, urgent)
            self._scheduler.add_job(
                self._requested,
                DateTrigger(run_date=when, timezone=UTC),
                args=(runner,),
                kwargs={"urgent": urgent},
                id=job_id,
                name=f"requested poll {name}",
            )
        self.on_request(name, "scheduled")

    def _promote(self, job_id: str) -> None:
        # Not due yet: the job itself (APScheduler reads kwargs when it submits it). Due and
        # waiting for a worker: its place in the queue. Both, for the moment in between.
        with suppress(JobLookupError):
            self._scheduler.modify_job(job_id, kwargs={"urgent": True})
        self._workers.promote(job_id, self.urgent_head_start)

    def _head_start(self, job: Any) -> float:
        # The heartbeat is as quick as it gets; behind a queue of polls it would be skipped
        # ("maximum number of running instances reached") while the daemon is merely busy.
        urgent = job.id == _HEARTBEAT or bool(job.kwargs.get("urgent"))
        return self.urgent_head_start if urgent else 0.0

    def _requested(self, runner: MailboxRunner, urgent: bool = True) -> None:
        with self._requests:
            # From now on a request needs a poll of its own.
            self._pending.pop(runner.name, None)
        try:
            if self._runners.get(runner.name) is not runner:
                return  # removed since (another replica owns it now): not ours to poll
            if runner.backing_off():
                # It began backing off after the request was made: wait for its end.
                self.request_poll(runner.name, urgent=urgent)
                return
            self._job(runner)
        finally:
            with self._requests:
                self.served += 1

    def waiting(self) -> int:
        """Polls due and waiting for a free worker (the ``polls_waiting`` metric): a queue here
        delays every poll, a notification's the least."""
        return self._workers.waiting()

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
        self._scheduler.add_job(self._beat, IntervalTrigger(seconds=5), id=_HEARTBEAT)

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
