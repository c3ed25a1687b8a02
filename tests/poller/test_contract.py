"""The delivery contract at every way out of a page (issue 11, points 1 to 4).

Whatever ends a poll (a stop, an exception, a forced shutdown, a replay cut short), every message
ends in exactly one of: the ledger, the pending queue, the dead letters, or the part of the folder
not yet synced (which the next poll reads again). Nothing is lost, and after recovery every message
is in the ledger under one key.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from listener.abc import ItemRef
from listener.errors import SourceError
from listener.model import Address, Message, idempotency_key
from listener.pipeline import PollHooks
from listener.poller import FailurePolicy
from listener.store import SqlStateStore, open_store
from tests.poller.fakes import FakeSource, RecordingHandler
from tests.poller.test_poller import Clock, make


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStateStore]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


# The contract holds with messages handed over concurrently (the default: handler_concurrency 8)
# and one at a time in received order (ordered = true); where a stop lands differs, so the
# tests below count what was reached instead of assuming where the stop came.
MODES = [pytest.param({}, id="concurrent"), pytest.param({"ordered": True}, id="ordered")]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> dict[str, object]:
    return dict(request.param)


def in_flight_at_most(mode: dict[str, object]) -> int:
    """How many hand-overs may be under way when a stop comes (they finish)."""
    return 1 if mode.get("ordered") else 8


def key_of(source: FakeSource, item_id: str) -> str:
    fetched = source.fetch([ItemRef(item_id)])[0]
    assert isinstance(fetched, Message)
    return fetched.idempotency_key


def fates(store: SqlStateStore, source: FakeSource, item_ids: list[str]) -> dict[str, str]:
    """Where each item stands; fails when one stands in two places or in none."""
    synced = int((store.get_sync_state("box", "inbox") or "fake:0").partition(":")[2])
    ledger = {e.idempotency_key for e in store.ledger("box")}
    pending = {p.item_id for p in store.pending("box")}
    dead = {d.idempotency_key for d in store.dead_letters("box")}
    out: dict[str, str] = {}
    for item_id in item_ids:
        key = key_of(source, item_id)
        places = [
            name
            for name, there in (
                ("ledger", key in ledger),
                ("pending", item_id in pending),
                ("dead", key in dead),
            )
            if there
        ]
        assert len(places) <= 1, f"{item_id} is in {places}"
        if not places:
            assert source.log.index(item_id) >= synced, f"{item_id} is nowhere: lost"
            places = ["unsynced"]
        out[item_id] = places[0]
    return out


def recover(store: SqlStateStore, source: FakeSource, clock: Clock, **settings: object) -> None:
    """Polls with a handler that always succeeds until nothing is left; all in the ledger."""
    poller, _ = make(store, source, clock=clock, start_from="all", **settings)
    for _ in range(5):
        clock.advance(100_000)
        poller.poll()
    assert store.pending("box") == []


def stop_after(
    handler: RecordingHandler, stop: threading.Event, successes: int
) -> Callable[[Message], None]:
    count = 0

    def handle(message: Message) -> None:
        nonlocal count
        handler(message)
        count += 1
        if count >= successes:
            stop.set()

    return handle


def test_stop_during_the_retry_pass_keeps_what_it_did_not_reach_pending(
    store: SqlStateStore, mode: dict[str, object]
) -> None:
    """SIGTERM in the retry pass: 20 messages that failed once are in the ledger or pending."""
    source = FakeSource()
    clock = Clock()
    ids = [source.deliver(f"m{i}") for i in range(20)]
    handler = RecordingHandler("h")
    handler.fail_times = {f"m{i}": 1 for i in range(20)}
    stop = threading.Event()
    poller, _ = make(
        store, source, handlers=(handler,), clock=clock, stop=stop, start_from="all", **mode
    )
    assert poller.poll().failed == 20
    clock.advance(3600)
    poller.handlers = {"h": stop_after(handler, stop, 4)}  # type: ignore[dict-item]
    result = poller.poll()
    reached = result.handed_over
    assert 4 <= reached <= 4 + in_flight_at_most(mode) - 1
    where = fates(store, source, ids)
    assert sorted(where.values()).count("ledger") == reached
    assert sorted(where.values()).count("pending") == 20 - reached
    recover(store, source, clock)
    assert set(fates(store, source, ids).values()) == {"ledger"}


def test_stop_mid_page_leaves_the_rest_unsynced(
    store: SqlStateStore, mode: dict[str, object]
) -> None:
    """A stop in the middle of a page: what was handed over is recorded, the rest read again."""
    source = FakeSource()
    clock = Clock()
    ids = [source.deliver(f"m{i}") for i in range(10)]
    handler = RecordingHandler("h")
    stop = threading.Event()
    poller, _ = make(
        store, source, handlers=(handler,), clock=clock, stop=stop, start_from="all", **mode
    )
    poller.handlers = {"h": stop_after(handler, stop, 3)}  # type: ignore[dict-item]
    reached = poller.poll().handed_over
    assert 3 <= reached <= 3 + in_flight_at_most(mode) - 1
    where = fates(store, source, ids)
    # Started in received order: what was reached is a prefix of the page.
    assert list(where.values()) == ["ledger"] * reached + ["unsynced"] * (10 - reached)
    recover(store, source, clock)
    assert set(fates(store, source, ids).values()) == {"ledger"}
    assert len(handler.received) == reached  # recovery used its own handler: no repeats here


def test_an_exception_after_hand_overs_still_records_them(
    store: SqlStateStore, mode: dict[str, object]
) -> None:
    """A bug that raises after handlers returned (here a hook) loses no record of them; the
    hand-overs in flight at that moment finish and are recorded too."""
    source = FakeSource()
    clock = Clock()
    ids = [source.deliver(f"m{i}") for i in range(6)]
    handler = RecordingHandler("h")

    class Buggy(PollHooks):
        seen = 0

        def handed_over(self, mailbox: str, handler: str, seconds: float) -> None:
            self.seen += 1
            if self.seen == 3:
                raise ZeroDivisionError("a bug in a metrics hook")

    poller, _ = make(store, source, handlers=(handler,), clock=clock, start_from="all", **mode)
    poller.hooks = Buggy()
    with pytest.raises(ZeroDivisionError):
        poller.poll()
    reached = len(handler.received)
    assert 3 <= reached <= 3 + in_flight_at_most(mode) - 1
    where = fates(store, source, ids)
    assert list(where.values()) == ["ledger"] * reached + ["unsynced"] * (6 - reached)
    recover(store, source, clock)
    assert set(fates(store, source, ids).values()) == {"ledger"}


def test_forced_shutdown_records_the_stuck_batch(
    store: SqlStateStore, mode: dict[str, object]
) -> None:
    """flush() at a forced shutdown: the batch's hand-overs recorded, the page unsynced."""
    source = FakeSource()
    clock = Clock()
    ids = [source.deliver(f"m{i}") for i in range(4)]
    poller, _ = make(store, source, clock=clock, start_from="all", **mode)
    stuck, release = threading.Event(), threading.Event()

    def hanging(refs: object) -> list[str | None]:
        stuck.set()
        release.wait(10)
        raise SourceError("token endpoint unreachable", transient=True)

    source.mark_read = hanging  # type: ignore[method-assign]
    thread = threading.Thread(target=poller.poll)
    thread.start()
    assert stuck.wait(10)
    assert poller.flush() is True
    assert set(fates(store, source, ids).values()) == {"ledger"}
    assert store.get_sync_state("box", "inbox") is None
    release.set()
    thread.join(10)
    assert store.get_sync_state("box", "inbox") is None  # the process is leaving


def test_a_stopped_replay_keeps_the_letters_it_did_not_reach(
    store: SqlStateStore, mode: dict[str, object]
) -> None:
    """dead-letters replay cut short: replayed letters in the ledger, the rest still letters."""
    source = FakeSource()
    clock = Clock()
    ids = [source.deliver(f"m{i}") for i in range(5)]
    handler = RecordingHandler("h")
    handler.permanent = {f"m{i}" for i in range(5)}
    stop = threading.Event()
    poller, _ = make(
        store, source, handlers=(handler,), clock=clock, stop=stop, start_from="all", **mode
    )
    assert poller.poll().dead_lettered == 5
    handler.permanent = set()
    poller.handlers = {"h": stop_after(handler, stop, 2)}  # type: ignore[dict-item]
    reached = poller.replay(store.dead_letters("box")).handed_over
    assert 2 <= reached <= 2 + in_flight_at_most(mode) - 1
    where = sorted(fates(store, source, ids).values())
    assert where == ["dead"] * (5 - reached) + ["ledger"] * reached


@pytest.mark.parametrize(
    "retry_after", ["99999999999999999999", 1e300, float("inf"), float("nan"), -5, "soon"]
)
def test_retry_after_is_clamped_to_backoff_max(store: SqlStateStore, retry_after: object) -> None:
    """A Retry-After of 10^20 s, infinity or garbage parks the message at most backoff_max."""
    source = FakeSource()
    clock = Clock()
    item = source.deliver("m")

    class Busy(Exception):
        pass

    def busy(message: Message) -> None:
        error = Busy("429 Too Many Requests")
        error.retry_after = retry_after  # type: ignore[attr-defined]
        raise error

    policy = FailurePolicy(max_attempts=3, backoff=10, backoff_max=600, jitter=0)
    poller, _ = make(store, source, clock=clock, start_from="all", failure=policy)
    poller.handlers = {"h": busy}  # type: ignore[dict-item]
    assert poller.poll().failed == 1
    (entry,) = store.pending("box")
    assert entry.item_id == item
    assert entry.attempts == 1
    assert clock.now + timedelta(seconds=10) <= entry.next_attempt_at
    assert entry.next_attempt_at <= clock.now + timedelta(seconds=600)
    clock.advance(601)
    assert poller.poll().failed == 1  # attempts still count, towards the dead letter
    clock.advance(601)
    assert poller.poll().dead_lettered == 1


def test_backoff_does_not_overflow_after_many_attempts() -> None:
    """The exponential back-off of attempt 5,000 is backoff_max, not an OverflowError."""
    import random

    policy = FailurePolicy(backoff=30, backoff_max=3600, jitter=0)
    assert policy.retry_delay(5000, random.Random(1)) == 3600


# --- point 2: a dead letter is recorded before its mail moves -----------------------------------


def test_dead_letter_is_recorded_before_its_mail_moves(store: SqlStateStore) -> None:
    """When the move to the dead-letter folder starts, the letter is already in the store."""
    source = FakeSource()
    handler = RecordingHandler("h")
    handler.permanent = {"poison"}
    source.deliver("poison")
    policy = FailurePolicy(max_attempts=3, dead_letter_folder="Failed")
    poller, _ = make(store, source, handlers=(handler,), start_from="all", failure=policy)
    real_move = source.move
    seen: list[int] = []

    def move(refs: list[ItemRef], folder: str) -> list[ItemRef | str]:
        seen.append(len(store.dead_letters("box")))
        return real_move(refs, folder)

    source.move = move  # type: ignore[method-assign]
    poller.poll()
    assert seen == [1]
    (letter,) = store.dead_letters("box")
    assert letter.item_id.endswith("-moved")  # the id it has in the dead-letter folder
    assert letter.moved_to == "Failed"


def test_replay_finds_mail_whose_move_was_not_recorded(store: SqlStateStore) -> None:
    """The move happened but its answer was lost: replay finds the mail by its Message-ID."""
    source = FakeSource()
    clock = Clock()
    handler = RecordingHandler("h")
    handler.permanent = {"poison"}
    item = source.deliver("poison")
    key = key_of(source, item)
    policy = FailurePolicy(max_attempts=3, dead_letter_folder="Failed")
    poller, _ = make(
        store, source, handlers=(handler,), clock=clock, start_from="all", failure=policy
    )
    real_move = source.move

    def lost_answer(refs: list[ItemRef], folder: str) -> list[ItemRef | str]:
        real_move(refs, folder)
        raise SourceError("connection dropped after MoveItem ran", transient=True)

    source.move = lost_answer  # type: ignore[method-assign]
    poller.poll()
    (letter,) = store.dead_letters("box")
    assert letter.item_id == item  # the id it had: nothing recorded the new one
    assert source.in_folder("Failed")
    handler.permanent = set()
    result = poller.replay([letter])
    assert result.handed_over == 1
    assert store.dead_letters("box") == []
    assert handler.received == [key, key]  # the same key, from the dead-letter folder


# --- point 3: the key belongs to the message in its mailbox -------------------------------------


def message(**given: object) -> Message:
    values: dict[str, object] = {
        "mailbox": "Orders@Contoso.com",
        "folder": "inbox",
        "item_id": "AAMk-1",
        "internet_message_id": "<abc@example.net>",
        "from_": Address(email="a@example.net"),
        "sent_at": datetime(2026, 11, 28, 12, 0, 1, tzinfo=UTC),
        "received_at": datetime(2026, 11, 28, 12, 0, 3, tzinfo=UTC),
        "subject": "Order",
    }
    values.update(given)
    return Message(**values)  # type: ignore[arg-type]


def test_key_ignores_folder_item_id_and_protocol() -> None:
    """The same message in another folder, under another id (a Graph immutable id) keeps its key."""
    base = message()
    moved = message(folder="Archive", item_id="AAMk-2")
    graph = message(item_id="AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A", source="graph")
    assert base.idempotency_key == moved.idempotency_key == graph.idempotency_key
    assert base.idempotency_key == message(mailbox="orders@contoso.com").idempotency_key
    assert base.idempotency_key != message(mailbox="other@contoso.com").idempotency_key


def test_key_without_message_id_uses_what_a_move_keeps() -> None:
    """No Message-ID: received and sent time, sender and subject; a move keeps the key."""
    a = message(internet_message_id=None)
    b = message(internet_message_id="  ", item_id="AAMk-9", folder="Archive")
    assert a.idempotency_key == b.idempotency_key == idempotency_key(a)
    assert a.idempotency_key != message(internet_message_id=None, subject="Other").idempotency_key


def test_key_survives_a_move_between_watched_folders(store: SqlStateStore) -> None:
    """after_success = move into another watched folder: that folder does not hand it over."""
    clock = Clock()
    inbox = FakeSource(folder="inbox")
    first, _ = make(store, inbox, clock=clock, start_from="all", after_success=("move", "Done"))
    item = inbox.deliver("order")
    assert first.poll().handed_over == 1
    done = FakeSource(folder="Done")
    done.items, done.log = inbox.items, inbox.log  # one mailbox, two watched folders
    done.log.append(f"{item}-moved")
    second, h2 = make(store, done, clock=clock, start_from="all", folder="Done")
    result = second.poll()
    assert result.handed_over == 0
    assert result.already_done == 1
    assert h2["h"].received == []
    assert len(store.ledger()) == 1


def test_resync_after_move_action_repeats_nothing(store: SqlStateStore) -> None:
    """A lost sync state after after_success moves: the items are not handed over again."""
    clock = Clock()
    source = FakeSource()
    poller, hs = make(store, source, clock=clock, start_from="all")
    for i in range(3):
        source.deliver(f"m{i}")
    poller.poll()
    store.reset_sync_state("box", "inbox")
    assert poller.poll().handed_over == 0
    assert len(hs["h"].received) == 3


def test_two_messages_sharing_a_message_id_are_both_handed_over(store: SqlStateStore) -> None:
    """A broken mailer reuses a Message-ID: a different sender or time gets a key of its own."""
    clock = Clock()
    source = FakeSource()
    poller, hs = make(store, source, clock=clock, start_from="all")
    source.deliver("first", message_id="<reused@mailer>", sender="a@example.net")
    source.deliver("same batch", message_id="<reused@mailer>", sender="b@example.net")
    assert poller.poll().handed_over == 2
    source.deliver("later batch", message_id="<reused@mailer>", sender="c@example.net")
    assert poller.poll().handed_over == 1
    keys = hs["h"].received
    assert len(set(keys)) == 3
    store.reset_sync_state("box", "inbox")  # a resync recognises all three
    assert poller.poll().handed_over == 0
    assert len(store.ledger()) == 3


def test_a_copy_of_a_message_is_the_same_message(store: SqlStateStore) -> None:
    """The same Message-ID, sender and sent time (a copy in the folder): handed over once."""
    clock = Clock()
    source = FakeSource()
    poller, hs = make(store, source, clock=clock, start_from="all")
    source.deliver("a", message_id="<one@example.net>")
    poller.poll()
    source.deliver("a", message_id="<one@example.net>")
    result = poller.poll()
    assert result.handed_over == 0
    assert result.already_done == 1
    assert len(hs["h"].received) == 1
