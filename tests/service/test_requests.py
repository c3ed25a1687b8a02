"""Poll requests (issue 15): coalesced, debounced, never lost mid-poll, polite during back-off.

A fake poller stands in for ``listener.poller.Poller`` (the service only calls ``poll()`` and
reads ``name``); the scheduler is the real APScheduler one, with the debounce set near zero or
to a window the test holds open by gating the poll, never by sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from listener.errors import Throttled
from listener.poller import PollResult
from listener.scheduler import Scheduler
from listener.service import MailboxRunner


class GatedPoller:
    """Counts polls; each poll may be held open until the test releases it."""

    def __init__(self, name: str = "box") -> None:
        self.name = name
        self.polls = 0
        self.started = threading.Semaphore(0)
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next: BaseException | None = None
        self._lock = threading.Lock()

    def poll(self) -> PollResult:
        with self._lock:
            self.polls += 1
        self.started.release()
        assert self.gate.wait(30), "the test never released the poll"
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error
        return PollResult(self.name)


def wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def poller() -> GatedPoller:
    return GatedPoller()


@pytest.fixture
def scheduler() -> Iterator[Scheduler]:
    s = Scheduler(max_workers=4, jitter=0, debounce=0.0, healthy_interval=7200)
    yield s
    s.shutdown()


def started(scheduler: Scheduler, poller: GatedPoller, *, interval: float = 3600) -> MailboxRunner:
    """A runner on ``scheduler`` whose first (interval) poll has run and ended."""
    runner = MailboxRunner(poller, interval)  # type: ignore[arg-type]
    scheduler.add(runner)
    scheduler.start()
    assert poller.started.acquire(timeout=10), "the first poll never started"
    wait_for(lambda: not scheduler.running(), "the first poll to end")
    return runner


def test_a_request_during_a_poll_is_followed_by_exactly_one_more() -> None:
    """``run`` while a poll runs returns None, and that poll repeats once: not zero, not twice."""
    poller = GatedPoller()
    runner = MailboxRunner(poller, 60)  # type: ignore[arg-type]
    poller.gate.clear()
    first = threading.Thread(target=runner.run)
    first.start()
    assert poller.started.acquire(timeout=10)
    assert runner.run() is None  # three triggers mid-poll ...
    assert runner.run() is None
    assert runner.run() is None
    poller.gate.set()
    first.join(10)
    assert poller.polls == 2  # ... cost one more poll, after the running one
    assert not runner.wants_poll


def test_a_request_after_a_poll_is_not_repeated() -> None:
    """Without a request mid-poll, a poll does not repeat."""
    poller = GatedPoller()
    runner = MailboxRunner(poller, 60)  # type: ignore[arg-type]
    runner.run()
    runner.run()
    assert poller.polls == 2


def test_a_burst_of_requests_costs_one_poll(poller: GatedPoller) -> None:
    """50 requests within the debounce window: one poll, 49 of them coalesced."""
    scheduler = Scheduler(max_workers=4, jitter=0, debounce=0.5)
    outcomes: list[str] = []
    scheduler.on_request = lambda name, outcome: outcomes.append(outcome)
    try:
        started(scheduler, poller)
        for _ in range(50):
            scheduler.request_poll("box")
        assert poller.started.acquire(timeout=10)
        wait_for(lambda: not scheduler.running(), "the requested poll to end")
    finally:
        scheduler.shutdown()
    assert poller.polls == 2  # the first interval poll and one requested poll
    assert outcomes.count("scheduled") == 1
    assert outcomes.count("coalesced") == 49


def test_requests_during_a_requested_poll_are_not_lost(
    scheduler: Scheduler, poller: GatedPoller
) -> None:
    """A burst arriving while the requested poll runs: that poll is followed by one more."""
    outcomes: list[str] = []
    scheduler.on_request = lambda name, outcome: outcomes.append(outcome)
    started(scheduler, poller)
    poller.gate.clear()
    scheduler.request_poll("box")
    assert poller.started.acquire(timeout=10)  # the requested poll runs, held open
    for _ in range(10):
        scheduler.request_poll("box")
    # Each request's job ran and found the poll busy (or a request joined one that did).
    wait_for(
        lambda: scheduler.served + 1 == outcomes.count("scheduled") and runner_wants(scheduler),
        "every mid-poll request to be noted",
    )
    poller.gate.set()
    assert poller.started.acquire(timeout=10)  # the one follow-up poll
    wait_for(lambda: not scheduler.running(), "the follow-up poll to end")
    assert poller.polls == 3
    scheduler.request_poll("box")  # and the mailbox still answers requests afterwards
    assert poller.started.acquire(timeout=10)
    wait_for(lambda: not scheduler.running(), "the next poll to end")
    assert poller.polls == 4


def runner_wants(scheduler: Scheduler) -> bool:
    return scheduler._runners["box"].wants_poll


def test_shutdown_waits_for_the_poll_a_request_found_running(
    scheduler: Scheduler, poller: GatedPoller
) -> None:
    """A request's job that leaves at once does not mark the still running poll idle."""
    started(scheduler, poller)
    poller.gate.clear()
    scheduler.request_poll("box")
    assert poller.started.acquire(timeout=10)
    scheduler.request_poll("box")
    wait_for(lambda: runner_wants(scheduler), "the mid-poll request to be noted")
    assert scheduler.running() == ["box"]
    assert not scheduler.wait_idle(0.05)
    poller.gate.set()
    assert scheduler.wait_idle(10)


def test_a_request_during_back_off_waits_for_its_end(
    scheduler: Scheduler, poller: GatedPoller
) -> None:
    """A throttled mailbox is not polled on a push before the back-off ends; then it is, once."""
    runner = started(scheduler, poller)
    runner.interval = 0.5  # the back-off's base (the job keeps its hour): about one second
    poller.fail_next = Throttled("busy", code="ApplicationThrottled", back_off=1.0)
    scheduler.request_poll("box")
    assert poller.started.acquire(timeout=10)
    wait_for(runner.backing_off, "the back-off to begin")
    ends = runner.not_before
    for _ in range(5):
        scheduler.request_poll("box")
    assert poller.started.acquire(timeout=10)  # one poll ...
    assert time.monotonic() >= ends  # ... and not before the back-off's end
    wait_for(lambda: not scheduler.running(), "the poll after the back-off to end")
    assert poller.polls == 3


def test_healthy_channel_stretches_the_safety_net_and_degraded_restores_it(
    scheduler: Scheduler, poller: GatedPoller
) -> None:
    """Connected: max(interval, healthy_interval); degraded: the configured interval again."""
    started(scheduler, poller, interval=60)
    assert scheduler.interval_of("box") == 60
    scheduler.set_healthy("box", True)
    assert scheduler.interval_of("box") == 7200
    scheduler.set_healthy("box", False)
    assert scheduler.interval_of("box") == 60


def test_a_healthy_interval_shorter_than_the_interval_never_shortens_it(
    poller: GatedPoller,
) -> None:
    """``healthy_interval`` only ever lengthens the safety net."""
    scheduler = Scheduler(max_workers=2, jitter=0, debounce=0, healthy_interval=30)
    try:
        started(scheduler, poller, interval=3600)
        scheduler.set_healthy("box", True)
        assert scheduler.interval_of("box") == 3600
    finally:
        scheduler.shutdown()


def test_a_request_for_an_unknown_mailbox_is_ignored(scheduler: Scheduler) -> None:
    """A channel naming a mailbox the scheduler does not run changes nothing and never raises."""
    outcomes: list[tuple[str, str]] = []
    scheduler.on_request = lambda name, outcome: outcomes.append((name, outcome))
    scheduler.start()
    scheduler.request_poll("nobody")
    assert outcomes == [("nobody", "ignored")]


def test_no_follow_up_poll_once_stopping() -> None:
    """A request during the last poll before shutdown does not start another one."""
    poller = GatedPoller()
    runner = MailboxRunner(poller, 60)  # type: ignore[arg-type]
    poller.gate.clear()
    first = threading.Thread(target=runner.run)
    first.start()
    assert poller.started.acquire(timeout=10)
    assert runner.run() is None
    runner.stop.set()
    poller.gate.set()
    first.join(10)
    assert poller.polls == 1
