"""Issue 14: concurrent, bounded hand-over; ordered lanes; full batches across pages; overlap."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from listener.model import Message
from listener.pipeline import HandlerPool
from listener.routing import Router
from listener.store import SqlStateStore, open_store
from tests.poller.fakes import FakeSource, RecordingHandler
from tests.poller.test_poller import make


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStateStore]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


class Gauge:
    """A handler that counts the calls under way and keeps the peak.

    Barrier-ish: each call waits (at most ``patience`` seconds) until ``expect`` calls are under
    way at once, so the peak reaches the bound whenever the bound allows it, and no test sleeps
    longer than it must.
    """

    def __init__(self, name: str, expect: int, patience: float = 1.0) -> None:
        self.name = name
        self.expect = expect
        self.patience = patience
        self.active = 0
        self.peak = 0
        self.order: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, message: Message) -> None:
        with self._cond:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.order.append(message.subject)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.active >= self.expect, timeout=self.patience)
        time.sleep(0.002)
        with self._cond:
            self.active -= 1

    def close(self) -> None:
        return


def test_a_mailbox_hands_over_at_most_handler_concurrency_at_once(store: SqlStateStore) -> None:
    """handler_concurrency = 4: four messages under way at once, never five."""
    source = FakeSource()
    for i in range(24):
        source.deliver(f"m{i}")
    gauge = Gauge("h", expect=5, patience=0.05)
    poller, _ = make(store, source, start_from="all", handler_concurrency=4)
    poller.handlers = {"h": gauge}
    assert poller.poll().handed_over == 24
    assert gauge.peak == 4


def test_a_handler_runs_at_most_max_concurrency_at_once(store: SqlStateStore) -> None:
    """max_concurrency = 2 on a handler bounds it below the mailbox's handler_concurrency."""
    source = FakeSource()
    for i in range(12):
        source.deliver(f"m{i}")
    gauge = Gauge("h", expect=3, patience=0.05)
    poller, _ = make(store, source, start_from="all", handler_concurrency=8)
    poller.handlers = {"h": gauge}
    poller._pool = HandlerPool(8, {"h": 2})
    assert poller.poll().handed_over == 12
    assert gauge.peak == 2


def test_the_process_pool_bounds_every_mailbox_together(tmp_path: Path) -> None:
    """Two mailboxes of 8 each sharing a pool of 3 threads: 3 hand-overs at once in all."""
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    pool = HandlerPool(3)
    gauge = Gauge("h", expect=4, patience=0.05)
    pollers = []
    for name in ("a", "b"):
        source = FakeSource(mailbox=f"{name}@example.com")
        for i in range(12):
            source.deliver(f"{name}{i}")
        poller, _ = make(store, source, start_from="all", handler_concurrency=8)
        poller.settings = poller.settings.__class__(**{**poller.settings.__dict__, "name": name})
        poller.handlers = {"h": gauge}
        poller._pool = pool
        pollers.append(poller)
    threads = [threading.Thread(target=p.poll) for p in pollers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    store.close()
    assert len(gauge.order) == 24
    assert gauge.peak == 3


@pytest.mark.parametrize("where", ["mailbox", "route"])
def test_ordered_hands_over_one_at_a_time_in_received_order(
    store: SqlStateStore, where: str
) -> None:
    """ordered = true (on the mailbox or on a route): one at a time, in the order received,
    across batches; with it on a route, the other messages still go concurrently."""
    source = FakeSource()
    for i in range(30):
        source.deliver(f"seq {i}" if i % 3 else f"free {i}")
    seq = Gauge("seq", expect=2, patience=0.02)
    free = Gauge("free", expect=4, patience=0.05)
    routes = Router(
        [
            {"subject": "^seq", "handlers": ["seq"], "ordered": where == "route"},
            {"handlers": ["free"]},
        ]
    )
    poller, _ = make(store, source, start_from="all", batch_size=7, ordered=where == "mailbox")
    poller.router = routes
    poller._ordered = routes.is_ordered
    poller.handlers = {"seq": seq, "free": free}
    assert poller.poll().handed_over == 30
    assert seq.peak == 1
    assert seq.order == [f"seq {i}" for i in range(30) if i % 3]
    if where == "mailbox":
        assert free.peak == 1
        assert free.order == [f"free {i}" for i in range(0, 30, 3)]
    else:
        assert free.peak > 1


def test_batches_are_full_across_page_boundaries(store: SqlStateStore) -> None:
    """512 + 512 new items in batches of 100: 11 GetItem, not 12; each page's sync state is
    committed with the batch that completes it, in order."""
    source = FakeSource()
    for i in range(1024):
        source.deliver(f"m{i}")
    committed: list[str] = []
    real_commit = store.commit

    def commit(*args: object, **kwargs: object) -> None:
        real_commit(*args, **kwargs)  # type: ignore[arg-type]
        if kwargs.get("sync_state") and args[1] == "inbox":
            committed.append(str(kwargs["sync_state"]))

    store.commit = commit  # type: ignore[method-assign]
    poller, hs = make(store, source, start_from="all", batch_size=100)
    result = poller.poll()
    assert result.handed_over == 1024
    assert result.pages == 2
    fetches = [c for c in source.calls if c.startswith("fetch")]
    assert fetches == ["fetch:100"] * 10 + ["fetch:24"]
    assert committed == ["fake:512", "fake:1024"]
    assert len(set(hs["h"].received)) == 1024


def test_a_later_batch_sees_what_an_uncommitted_one_handed_over(store: SqlStateStore) -> None:
    """A copy of a message in the next batch of the same poll is done, even before the first
    batch's commit (the settler's) has happened."""
    source = FakeSource()
    source.deliver("a", message_id="<one@example.net>")
    source.deliver("a", message_id="<one@example.net>")
    source.deliver("b")
    real_commit = store.commit

    def slow_commit(*args: object, **kwargs: object) -> None:
        time.sleep(0.2)
        real_commit(*args, **kwargs)  # type: ignore[arg-type]

    poller, hs = make(store, source, start_from="all", batch_size=1)
    store.commit = slow_commit  # type: ignore[method-assign]
    result = poller.poll()
    assert (result.handed_over, result.already_done) == (2, 1)
    assert len(hs["h"].received) == 2
    assert len(store.ledger("box")) == 2


def test_a_slow_mailbox_does_not_hold_up_another(tmp_path: Path) -> None:
    """One mailbox's handler hangs with all its slots taken: another mailbox on the same pool
    polls, hands over and commits meanwhile."""
    store = open_store(f"sqlite:///{tmp_path}/state.db")
    pool = HandlerPool(4)
    release = threading.Event()
    slow_source, fast_source = FakeSource("slow@example.com"), FakeSource("fast@example.com")
    for i in range(10):
        slow_source.deliver(f"s{i}")
        fast_source.deliver(f"f{i}")

    def hanging(message: Message) -> None:
        release.wait(10)

    slow, _ = make(store, slow_source, start_from="all", handler_concurrency=2)
    slow.handlers = {"h": hanging}  # type: ignore[dict-item]
    fast, _ = make(store, fast_source, start_from="all", handler_concurrency=2)
    for poller, name in ((slow, "slow"), (fast, "fast")):
        poller.settings = poller.settings.__class__(**{**poller.settings.__dict__, "name": name})
        poller._pool = pool
    thread = threading.Thread(target=slow.poll)
    thread.start()
    try:
        started = time.monotonic()
        assert fast.poll().handed_over == 10
        assert time.monotonic() - started < 2
        assert len(store.ledger("fast")) == 10
        release.set()
        thread.join(10)
        assert len(store.ledger("slow")) == 10
    finally:
        release.set()
        store.close()


def test_a_stop_discards_the_prefetched_batch(store: SqlStateStore) -> None:
    """SIGTERM while the next batch is read ahead: it is not handed over, and the sync state
    stays before it; the next poll hands it over."""
    source = FakeSource()
    for i in range(6):
        source.deliver(f"m{i}")
    stop = threading.Event()
    handler = RecordingHandler("h")

    def stopping(message: Message) -> None:
        handler(message)
        stop.set()

    poller, _ = make(store, source, start_from="all", batch_size=2, stop=stop, ordered=True)
    poller.handlers = {"h": stopping}  # type: ignore[dict-item]
    assert poller.poll().handed_over == 1
    assert store.get_sync_state("box", "inbox") is None
    stop.clear()
    poller.handlers = {"h": handler}
    assert poller.poll().handed_over == 5
    assert len(handler.received) == 6
