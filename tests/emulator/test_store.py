"""The mail store directly: event log, waiting for events, sync paging rules, scale."""

from __future__ import annotations

import threading
import time

from ews_listener_emulators.store import MailStore
from tests.emulator.conftest import simple_mime

ADDRESS = "carol@contoso.com"


def _store_with(count: int) -> tuple[MailStore, list[str]]:
    store = MailStore()
    mailbox = store.add_mailbox(ADDRESS)
    inbox = mailbox.distinguished["inbox"]
    # Items from fields, not MIME: the scale test is about the store, not the email parser.
    ids = [store.file(inbox, store.new_item(subject=f"m{i}")).item_id for i in range(count)]
    return store, ids


def test_event_log_records_every_kind() -> None:
    """Deliver, update, move, copy, delete: NewMail, Created, Modified, Moved, Copied, Deleted."""
    store, (first, second) = _store_with(2)
    mailbox = store.mailbox(ADDRESS)
    assert mailbox is not None
    junk = mailbox.distinguished["junkemail"]
    start = store.last_event_seq(mailbox)
    item = store.item(mailbox, first)
    assert item is not None
    store.update(item, lambda i: setattr(i, "is_read", True), read_only=True)
    moved = store.move(item, junk)
    copy = store.copy(moved, mailbox.distinguished["inbox"])
    other = store.item(mailbox, second)
    assert other is not None
    store.delete(other)
    events = store.events_since(mailbox, start)
    assert [e.kind for e in events] == ["Modified", "Moved", "Copied", "Deleted"]
    assert (events[1].old_item_id, events[1].item_id) == (first, moved.item_id)
    assert events[2].item_id == copy.item_id
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert len({e.watermark for e in store.events_since(mailbox, 0)}) == len(mailbox.events)
    kinds = [e.kind for e in store.events_since(mailbox, 0)[:2]]
    assert kinds == ["NewMail", "Created"]


def test_wait_events_wakes_on_delivery() -> None:
    """wait_events blocks until another thread delivers, then returns the new events."""
    store, _ = _store_with(0)
    mailbox = store.mailbox(ADDRESS)
    assert mailbox is not None
    seq = store.last_event_seq(mailbox)
    got: list[str] = []

    def waiter() -> None:
        got.extend(e.kind for e in store.wait_events(mailbox, seq, timeout=10))

    thread = threading.Thread(target=waiter)
    thread.start()
    store.file(mailbox.distinguished["inbox"], store.parse(simple_mime("wake")))
    thread.join(timeout=10)
    assert got[:1] == ["NewMail"]


def test_wait_events_times_out_empty() -> None:
    """Without new events wait_events returns an empty list after its timeout."""
    store, _ = _store_with(1)
    mailbox = store.mailbox(ADDRESS)
    assert mailbox is not None
    assert store.wait_events(mailbox, store.last_event_seq(mailbox), timeout=0.01) == []


def test_sync_over_ten_thousand_items_is_not_quadratic() -> None:
    """Paging 10,000 items through sync at 512 a page stays fast (no per-page full rescans)."""
    store, ids = _store_with(10_000)
    mailbox = store.mailbox(ADDRESS)
    assert mailbox is not None
    inbox = mailbox.distinguished["inbox"]
    started = time.perf_counter()
    position, seen, last = 0, [], False
    while not last:
        changes, position, last = store.sync(inbox, position, 512)
        seen.extend(c.item_id for c in changes)
    assert seen == ids
    assert time.perf_counter() - started < 5


def test_sync_reports_net_changes() -> None:
    """An item created and moved away after the position is not reported; a read is a flag."""
    store, (kept, moved_away) = _store_with(2)
    mailbox = store.mailbox(ADDRESS)
    assert mailbox is not None
    inbox = mailbox.distinguished["inbox"]
    _, position, _ = store.sync(inbox, 0, 512)
    transient = store.file(inbox, store.parse(simple_mime("transient")))
    store.move(transient, mailbox.distinguished["junkemail"])
    item = store.item(mailbox, kept)
    assert item is not None
    store.update(item, lambda i: setattr(i, "is_read", True), read_only=True)
    gone = store.item(mailbox, moved_away)
    assert gone is not None
    store.move(gone, mailbox.distinguished["deleteditems"])
    changes, _, last = store.sync(inbox, position, 512)
    assert last
    assert {(c.kind, c.item_id) for c in changes} == {
        ("ReadFlagChange", kept),
        ("Delete", moved_away),
    }
