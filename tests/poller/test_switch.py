"""A mailbox switched from one protocol to another (EWS → Microsoft Graph), with fakes of both.

The new source cannot read the old one's sync state or item ids: the folder is synced from its
start, the ledger skips what the old source handed over (keys hold no protocol), the start_from
floor keeps older mail out, and what waited for a retry or sat in the dead letters is found
again by its Message-ID. Nothing is handed over twice, nothing is lost.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from listener.abc import ItemRef
from listener.poller import Poller
from listener.store import SqlStateStore, open_store
from tests.poller.fakes import FakeSource, RecordingHandler
from tests.poller.test_poller import Clock, make


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStateStore]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def switched(old: FakeSource, kind: str = "graph") -> FakeSource:
    """The same mailbox seen through another protocol: same mail, other ids, other states."""
    new = FakeSource(old.mailbox, old.folder)
    new.kind = kind  # type: ignore[misc]
    new.now = old.now
    for item_id in old.log:
        item = copy.copy(old.items[item_id]) if item_id in old.items else None
        new_id = f"{kind}-{item_id}"
        new.log.append(new_id)
        if item is not None:
            item.item_id = new_id
            new.items[new_id] = item
    for item_id, item in old.items.items():  # moved items are not in the log of the folder
        if f"{kind}-{item_id}" not in new.items and item_id not in old.log:
            moved = copy.copy(item)
            moved.item_id = f"{kind}-{item_id}"
            new.items[moved.item_id] = moved
    return new


def repoll(
    store: SqlStateStore,
    source: FakeSource,
    handler: RecordingHandler,
    clock: Clock,
    **settings: object,
) -> Poller:
    poller, _ = make(store, source, handlers=(handler,), clock=clock, **settings)
    return poller


def test_switch_hands_over_exactly_what_arrived_after_the_last_poll(store: SqlStateStore) -> None:
    """500 through the old protocol, 100 more delivered, switch: exactly those 100, same keys."""
    clock = Clock()
    old = FakeSource()
    old.now = clock.now - timedelta(days=2)
    for i in range(20):
        old.deliver(f"before the listener {i}")
    handler = RecordingHandler("h")
    poller = repoll(store, old, handler, clock)
    poller.poll()  # first sync: start_from new
    old.now = clock.now + timedelta(minutes=1)
    for i in range(500):
        old.deliver(f"first {i}")
    assert poller.poll().handed_over == 500
    for i in range(100):
        old.deliver(f"later {i}")
    expected_keys = [
        m.idempotency_key  # type: ignore[union-attr]
        for m in old.fetch([ItemRef(i) for i in old.log[-100:]])
    ]
    handler.received.clear()
    new = switched(old)
    result = repoll(store, new, handler, clock).poll()
    assert result.handed_over == 100
    assert sorted(handler.received) == sorted(expected_keys)
    assert result.already_done == 500
    stored = store.get_sync_state("box", "inbox") or ""
    assert stored.startswith("graph:")
    # and from now on an ordinary incremental poll
    new.deliver("after the switch")
    assert repoll(store, new, handler, clock).poll().handed_over == 1


def test_a_retry_parked_by_the_old_protocol_is_found_by_message_id(store: SqlStateStore) -> None:
    """Pending under an EWS id: the Graph source finds the mail by Message-ID and retries it."""
    clock = Clock()
    old = FakeSource()
    handler = RecordingHandler("h")
    poller = repoll(store, old, handler, clock, start_from="all")
    old.deliver("flaky")
    handler.fail_times["flaky"] = 1
    assert poller.poll().failed == 1
    (entry,) = store.pending("box")
    assert (entry.source, entry.internet_message_id) == ("fake", "<ID1@example.com>")
    clock.advance(3600)
    new = switched(old)
    result = repoll(store, new, handler, clock, start_from="all").poll()
    assert result.handed_over == 1
    assert store.pending("box") == []
    assert len(handler.received) == 2  # the failed attempt, then one success
    assert len(store.ledger("box")) == 1
    assert store.dead_letters("box") == []


def test_a_retry_of_mail_no_longer_there_becomes_a_dead_letter(store: SqlStateStore) -> None:
    """Pending mail a person deleted before the switch: a dead letter that says why."""
    clock = Clock()
    old = FakeSource()
    handler = RecordingHandler("h")
    poller = repoll(store, old, handler, clock, start_from="all")
    old.deliver("flaky")
    handler.fail_times["flaky"] = 1
    poller.poll()
    old.items["ID1"].folder = "deleteditems"
    clock.advance(3600)
    repoll(store, switched(old), handler, clock, start_from="all").poll()
    assert store.pending("box") == []
    (letter,) = store.dead_letters("box")
    assert letter.source == "fake"
    assert letter.internet_message_id == "<ID1@example.com>"
    assert "switched to graph" in letter.error


def test_a_dead_letter_of_the_old_protocol_replays_by_message_id(store: SqlStateStore) -> None:
    """A letter recorded under an EWS id replays through Graph with the same key."""
    clock = Clock()
    old = FakeSource()
    handler = RecordingHandler("h")
    poller = repoll(store, old, handler, clock, start_from="all")
    old.deliver("poison")
    handler.permanent.add("poison")
    poller.poll()
    (letter,) = store.dead_letters("box")
    handler.permanent.clear()
    handler.received.clear()
    result = repoll(store, switched(old), handler, clock, start_from="all").replay([letter])
    assert result.handed_over == 1
    assert handler.received == [letter.idempotency_key]
    assert store.dead_letters("box") == []


def test_switching_back_is_the_same_path(store: SqlStateStore) -> None:
    """Graph → EWS again: the Graph state is foreign to EWS; still nothing repeated."""
    clock = Clock()
    old = FakeSource()
    handler = RecordingHandler("h")
    repoll(store, old, handler, clock).poll()
    old.now = clock.now + timedelta(minutes=1)
    old.deliver("a")
    new = switched(old)
    assert repoll(store, new, handler, clock).poll().handed_over == 1
    new.deliver("b")
    back = switched(new, kind="fake")
    result = repoll(store, back, handler, clock).poll()
    assert (result.handed_over, result.already_done) == (1, 1)
