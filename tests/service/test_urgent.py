"""Urgent first (issue 15, 1,000 EWS mailboxes): a notification's poll goes ahead of the polls
waiting for a worker (interval polls, catch-ups after a subscription), for a bounded time.

The real APScheduler scheduler with one worker: a gated poll holds it while the test queues
requests behind it, then releases it and reads the order the polls ran in.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from listener.poller import PollResult
from listener.scheduler import Scheduler
from listener.service import MailboxRunner


class OrderedPoller:
    """Appends its name to a shared list at each poll; the ``held`` one waits for ``gate``."""

    def __init__(self, name: str, order: list[str], gate: threading.Event | None = None) -> None:
        self.name = name
        self.order = order
        self.gate = gate
        self.started = threading.Event()

    def poll(self) -> PollResult:
        self.order.append(self.name)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never released the poll"
        return PollResult(self.name)


def wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Busy:
    """A one-worker scheduler whose worker is held by mailbox ``held`` until ``release``."""

    def __init__(self, names: list[str], *, debounce: float = 0.0, head_start: float = 30.0):
        self.order: list[str] = []
        self.gate = threading.Event()
        self.scheduler = Scheduler(
            max_workers=1,
            jitter=0,
            debounce=debounce,
            healthy_interval=7200,
            urgent_head_start=head_start,
        )
        self.held = OrderedPoller("held", self.order, self.gate)
        self.pollers = {n: OrderedPoller(n, self.order) for n in names}
        for poller in [self.held, *self.pollers.values()]:
            self.scheduler.add(MailboxRunner(poller, 3600))  # type: ignore[arg-type]
        self.gate.set()
        self.scheduler.start()
        # The first (interval) polls at start; then the worker is held by a requested poll.
        wait_for(lambda: len(self.order) == len(names) + 1, "the first polls")
        wait_for(lambda: not self.scheduler.running(), "the first polls to end")
        self.order.clear()
        self.gate.clear()
        for poller in [self.held, *self.pollers.values()]:
            poller.started.clear()
        self.scheduler.request_poll("held")
        assert self.held.started.wait(10), "the held poll never started"

    def release(self, polls: int) -> list[str]:
        """Free the worker; the order of the next ``polls`` polls after the held one."""
        self.gate.set()
        wait_for(lambda: len(self.order) == polls + 1, f"{polls} polls after the held one")
        wait_for(lambda: not self.scheduler.running(), "the polls to end")
        return self.order[1:]


@pytest.fixture
def busy() -> Iterator[Busy]:
    made = Busy(["c0", "c1", "c2", "hot"])
    yield made
    made.gate.set()
    made.scheduler.shutdown()


def test_a_notifications_poll_goes_ahead_of_waiting_catch_ups(busy: Busy) -> None:
    """Catch-ups queued first, a notification last: the notification's poll runs first, the
    catch-ups after it in their order (first in, first out, as the queue was before)."""
    for name in ("c0", "c1", "c2"):
        busy.scheduler.request_poll(name, urgent=False)
    wait_for(lambda: busy.scheduler.waiting() == 3, "three catch-ups waiting")
    busy.scheduler.request_poll("hot")
    wait_for(lambda: busy.scheduler.waiting() == 4, "the notification's poll waiting")
    assert busy.release(4) == ["hot", "c0", "c1", "c2"]


def test_interval_polls_wait_behind_a_notifications_poll(busy: Busy) -> None:
    """The safety net's polls (due, waiting for the worker) let a notification's poll pass."""
    for name in ("c0", "c1"):
        busy.scheduler._scheduler.modify_job(name, next_run_time=_now())
    wait_for(lambda: busy.scheduler.waiting() == 2, "two interval polls waiting")
    busy.scheduler.request_poll("hot")
    wait_for(lambda: busy.scheduler.waiting() == 3, "the notification's poll waiting")
    assert busy.release(3) == ["hot", "c0", "c1"]


@pytest.mark.parametrize("debounce", [0.0, 1.0], ids=["due", "not-yet-due"])
def test_a_notification_joining_a_pending_catch_up_makes_it_urgent(debounce: float) -> None:
    """A notification for a mailbox whose catch-up is pending costs no second poll, and that
    poll goes ahead, whether it was waiting for the worker or for its debounce window."""
    busy = Busy(["c0", "c1", "c2"], debounce=debounce)
    outcomes: list[tuple[str, str]] = []
    busy.scheduler.on_request = lambda name, outcome: outcomes.append((name, outcome))
    try:
        for name in ("c0", "c1", "c2"):
            busy.scheduler.request_poll(name, urgent=False)
        if not debounce:
            wait_for(lambda: busy.scheduler.waiting() == 3, "three catch-ups waiting")
        else:
            assert busy.scheduler.waiting() == 0  # still in their debounce window
        busy.scheduler.request_poll("c2")
        wait_for(lambda: busy.scheduler.waiting() == 3, "three polls waiting")
        assert busy.release(3) == ["c2", "c0", "c1"]
    finally:
        busy.gate.set()
        busy.scheduler.shutdown()
    assert ("c2", "coalesced") in outcomes


def test_the_head_start_is_bounded() -> None:
    """A poll that has waited longer than the head start goes before a newer urgent one: a
    steady stream of notifications cannot starve the safety net."""
    busy = Busy(["old", "new", "hot"], head_start=0.3)
    try:
        busy.scheduler.request_poll("old", urgent=False)
        wait_for(lambda: busy.scheduler.waiting() == 1, "the old catch-up waiting")
        queued = time.monotonic()
        wait_for(lambda: time.monotonic() - queued > 0.5, "the head start to pass")
        busy.scheduler.request_poll("new", urgent=False)
        wait_for(lambda: busy.scheduler.waiting() == 2, "the new catch-up waiting")
        busy.scheduler.request_poll("hot")
        wait_for(lambda: busy.scheduler.waiting() == 3, "the notification's poll waiting")
        assert busy.release(3) == ["old", "hot", "new"]
    finally:
        busy.gate.set()
        busy.scheduler.shutdown()


def test_a_poll_waiting_at_shutdown_never_starts(busy: Busy) -> None:
    """Shutdown drops what waits for a worker (the sources close next); the running poll ends."""
    busy.scheduler.request_poll("c0")
    wait_for(lambda: busy.scheduler.waiting() == 1, "a poll waiting")
    busy.scheduler.stop_scheduling()
    busy.scheduler.shutdown()
    assert busy.scheduler.waiting() == 0
    busy.gate.set()
    assert busy.scheduler.wait_idle(10)
    assert busy.order == ["held"]
    assert not busy.pollers["c0"].started.is_set()


def _now() -> datetime:
    return datetime.now(UTC)
