"""The poller's contract: every message handed over once in effect, nothing lost, nothing stuck."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from listener.errors import SourceError
from listener.model import Message
from listener.poller import FailurePolicy, Poller, PollerSettings
from listener.store import open_store
from tests.poller.fakes import FakeSource, RecordingHandler


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[object]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def make(
    store: object,
    source: FakeSource,
    *,
    handlers: tuple[RecordingHandler, ...] | None = None,
    clock: Clock | None = None,
    stop: threading.Event | None = None,
    **settings: object,
) -> tuple[Poller, dict[str, RecordingHandler]]:
    hs = {h.name: h for h in (handlers or (RecordingHandler("h"),))}
    policy = settings.pop("failure", FailurePolicy(max_attempts=3, backoff=10, jitter=0))
    ps = PollerSettings(name="box", credential="cred", failure=policy, **settings)  # type: ignore[arg-type]
    poller = Poller(
        ps,
        source,
        store,  # type: ignore[arg-type]
        lambda m: list(hs),
        hs,
        clock=clock or Clock(),
        stop=stop,
    )
    return poller, hs


def test_start_from_new_skips_existing_mail(store: object) -> None:
    """With start_from=new, mail already in the folder is not handed over; new mail is."""
    source = FakeSource()
    source.deliver("old")
    poller, hs = make(store, source)
    assert poller.poll().handed_over == 0
    source.deliver("new")
    result = poller.poll()
    assert result.handed_over == 1
    assert len(hs["h"].received) == 1


def test_start_from_all_hands_over_everything_across_pages(store: object) -> None:
    """start_from=all hands over every existing message, batch after batch."""
    source = FakeSource()
    for i in range(250):
        source.deliver(f"m{i}")
    poller, hs = make(store, source, start_from="all", batch_size=100)
    result = poller.poll()
    assert result.handed_over == 250
    assert source.calls.count("changes") == 1  # one sync page of up to 512 changes
    assert [c for c in source.calls if c.startswith("fetch")] == [
        "fetch:100",
        "fetch:100",
        "fetch:50",
    ]
    assert len(set(hs["h"].received)) == 250
    assert all(i.is_read for i in source.items.values())


def test_start_from_unread_hands_over_only_unread(store: object) -> None:
    """start_from=unread hands over what is unread at the first poll, not what was read."""
    source = FakeSource()
    source.deliver("read", is_read=True)
    source.deliver("unread")
    poller, hs = make(store, source, start_from="unread")
    result = poller.poll()
    assert result.handed_over == 1
    assert poller.poll().handed_over == 0
    assert len(hs["h"].received) == 1


def test_transient_failure_is_retried_then_recorded_once(store: object) -> None:
    """A transient failure parks the message; once due it is retried and recorded once."""
    source = FakeSource()
    clock = Clock()
    poller, hs = make(store, source, clock=clock)
    poller.poll()
    source.deliver("flaky")
    hs["h"].fail_times["flaky"] = 1
    first = poller.poll()
    assert (first.failed, first.handed_over) == (1, 0)
    assert store.pending_count("box") == 1  # type: ignore[attr-defined]
    assert poller.poll().handed_over == 0  # not yet due
    clock.advance(11)
    assert poller.poll().handed_over == 1
    assert store.pending_count("box") == 0  # type: ignore[attr-defined]
    assert len(store.ledger("box")) == 1  # type: ignore[attr-defined]
    assert source.in_folder()[0].is_read


def test_attempts_run_out_into_a_dead_letter(store: object) -> None:
    """Transient failures past max_attempts become a non-permanent dead letter."""
    source = FakeSource()
    clock = Clock()
    poller, hs = make(store, source, clock=clock)
    poller.poll()
    source.deliver("always")
    hs["h"].fail_times["always"] = 99
    for _ in range(4):
        poller.poll()
        clock.advance(3600)
    letters = store.dead_letters("box")  # type: ignore[attr-defined]
    assert len(letters) == 1
    assert letters[0].permanent is False
    assert letters[0].attempts == 3
    assert store.pending_count("box") == 0  # type: ignore[attr-defined]


def test_permanent_failure_is_dead_lettered_moved_and_replayed(store: object) -> None:
    """A PermanentError dead-letters and moves the item; replay hands it over from there."""
    source = FakeSource()
    policy = FailurePolicy(max_attempts=3, dead_letter_folder="Failed")
    poller, hs = make(store, source, failure=policy)
    poller.poll()
    source.deliver("poison")
    hs["h"].permanent.add("poison")
    result = poller.poll()
    assert result.dead_lettered == 1
    [letter] = store.dead_letters("box")  # type: ignore[attr-defined]
    assert letter.permanent
    assert source.items[letter.item_id].folder == "Failed"
    hs["h"].permanent.clear()
    replayed = poller.replay([letter])
    assert replayed.handed_over == 1
    assert store.dead_letters("box") == []  # type: ignore[attr-defined]
    assert len(store.ledger("box")) == 1  # type: ignore[attr-defined]


def test_only_failed_handlers_run_again(store: object) -> None:
    """With two handlers, a retry calls only the one that failed."""
    source = FakeSource()
    clock = Clock()
    a, b = RecordingHandler("a"), RecordingHandler("b")
    poller, _ = make(store, source, handlers=(a, b), clock=clock)
    poller.poll()
    source.deliver("half")
    b.fail_times["half"] = 1
    poller.poll()
    clock.advance(60)
    poller.poll()
    assert len(a.received) == 1
    assert len(b.received) == 2
    assert {e.handler for e in store.ledger("box")} == {"a", "b"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("ordered", [False, True], ids=["concurrent", "ordered"])
def test_stop_mid_page_keeps_the_sync_state_and_repeats_nothing(
    store: object, ordered: bool
) -> None:
    """Stopping in the middle of a page keeps the state; the next poll skips what was done."""
    source = FakeSource()
    stop = threading.Event()
    handler = RecordingHandler("h")

    def stopping(message: Message) -> None:
        handler(message)
        if len(handler.received) == 2:
            stop.set()

    poller, _ = make(store, source, start_from="all", stop=stop, ordered=ordered)
    for i in range(5):
        source.deliver(f"m{i}")
    poller.handlers = {"h": stopping}  # type: ignore[dict-item]
    first = poller.poll()
    assert first.handed_over == 2 if ordered else first.handed_over >= 2
    assert store.get_sync_state("box", "inbox") is None  # type: ignore[attr-defined]
    stop.clear()
    second = poller.poll()
    assert second.handed_over == 5 - first.handed_over
    assert len(set(handler.received)) == 5
    assert len(handler.received) == 5


def test_after_success_actions(store: object) -> None:
    """move, categorize, delete and none are applied to handed-over items."""
    for action, check in [
        (("move", "Done"), lambda s: s.in_folder("Done")),
        (("categorize", "Handled"), lambda s: [i for i in s.items.values() if i.categories]),
        (("delete", None), lambda s: s.in_folder("deleteditems")),
        (("none", None), lambda s: [i for i in s.items.values() if not i.is_read]),
    ]:
        source = FakeSource(mailbox=f"{action[0]}@example.com")
        poller, _ = make(store, source, after_success=action, start_from="all")
        poller.settings = poller.settings.__class__(
            **{**poller.settings.__dict__, "name": f"box-{action[0]}"}
        )
        source.deliver("x")
        assert poller.poll().handed_over == 1
        assert len(check(source)) == 1, action


def test_gone_item_is_counted_not_dead_lettered(store: object) -> None:
    """An item deleted between sync and fetch is reported as gone, nothing else."""
    source = FakeSource()
    poller, _ = make(store, source, start_from="all")
    item = source.deliver("vanishing")
    source.gone.add(item)
    result = poller.poll()
    assert result.gone == 1
    assert store.dead_letters("box") == []  # type: ignore[attr-defined]


def test_source_error_propagates_and_state_stays(store: object) -> None:
    """A failing source raises out of poll() and leaves the sync state where it was."""
    source = FakeSource()
    poller, _ = make(store, source)
    poller.poll()
    state = store.get_sync_state("box", "inbox")  # type: ignore[attr-defined]
    source.deliver("x")
    source.fail_changes = SourceError("ErrorServerBusy", transient=True, back_off=5)
    with pytest.raises(SourceError):
        poller.poll()
    assert store.get_sync_state("box", "inbox") == state  # type: ignore[attr-defined]
    source.fail_changes = None
    assert poller.poll().handed_over == 1


def test_crash_before_commit_hands_over_again_with_same_key(store: object) -> None:
    """If the commit is lost after a hand-over, the next poll repeats it with the same key."""
    source = FakeSource()
    poller, hs = make(store, source, start_from="all")
    source.deliver("x")
    real_commit = store.commit  # type: ignore[attr-defined]

    def broken_commit(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk gone")

    store.commit = broken_commit  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError):
        poller.poll()
    store.commit = real_commit  # type: ignore[attr-defined]
    poller.poll()
    assert len(hs["h"].received) == 2
    assert len(set(hs["h"].received)) == 1
    assert len(store.ledger("box")) == 1  # type: ignore[attr-defined]


def test_failed_tidy_up_does_not_hand_over_again(store: object) -> None:
    """A throttled mark-read after the handlers ran still commits the ledger: no repeat."""
    source = FakeSource()
    poller, hs = make(store, source, start_from="all")
    source.deliver("x")

    def throttled(refs: object) -> list[str | None]:
        raise SourceError("ErrorServerBusy", transient=True, back_off=5)

    source.mark_read = throttled  # type: ignore[method-assign]
    assert poller.poll().handed_over == 1
    assert poller.poll().handed_over == 0
    assert len(hs["h"].received) == 1
    assert len(store.ledger("box")) == 1  # type: ignore[attr-defined]


def test_lost_sync_state_resyncs_without_repeats_or_old_mail(store: object) -> None:
    """ErrorInvalidSyncStateData: sync again from the start; nothing repeated, no pre-start mail."""
    source = FakeSource()
    clock = Clock()
    source.now = clock.now - timedelta(days=1)
    source.deliver("there before the listener")
    poller, hs = make(store, source, clock=clock)
    poller.poll()
    source.now = clock.now + timedelta(minutes=1)
    source.deliver("first")
    assert poller.poll().handed_over == 1
    source.forget_states = True
    source.deliver("second")
    result = poller.poll()
    assert result.handed_over == 1
    assert result.already_done == 1
    assert len(hs["h"].received) == 2


def test_page_synced_again_does_not_dead_letter_twice(store: object) -> None:
    """A crash mid-page re-syncs the page; a dead letter from its first batch is not made again."""
    source = FakeSource()
    stop = threading.Event()
    handler = RecordingHandler("h")
    handler.permanent.add("poison")
    calls = 0

    def stopping(message: Message) -> None:
        nonlocal calls
        calls += 1
        handler(message)  # poison raises PermanentError here
        if calls == 3:
            stop.set()

    poller, _ = make(store, source, start_from="all", stop=stop, batch_size=2)
    poller.handlers = {"h": stopping}  # type: ignore[dict-item]
    for subject in ("a", "poison", "b", "c"):
        source.deliver(subject)
    poller.poll()
    assert len(store.dead_letters("box")) == 1  # type: ignore[attr-defined]
    stop.clear()
    result = poller.poll()
    assert result.dead_lettered == 0
    assert len(store.dead_letters("box")) == 1  # type: ignore[attr-defined]
    assert len(store.ledger("box")) == 3  # type: ignore[attr-defined]


def test_flush_saves_a_stuck_polls_hand_overs(store: object) -> None:
    """flush() (forced shutdown) commits the ledger of a poll stuck after its handlers ran."""
    source = FakeSource()
    poller, _ = make(store, source, start_from="all")
    source.deliver("x")
    stuck = threading.Event()
    release = threading.Event()

    def hanging_mark_read(refs: object) -> list[str | None]:
        stuck.set()
        release.wait(10)
        raise SourceError("token endpoint unreachable", transient=True)

    source.mark_read = hanging_mark_read  # type: ignore[method-assign]
    thread = threading.Thread(target=poller.poll)
    thread.start()
    assert stuck.wait(10)
    assert poller.flush() is True
    assert len(store.ledger("box")) == 1  # type: ignore[attr-defined]
    assert store.get_sync_state("box", "inbox") is None  # type: ignore[attr-defined]
    release.set()
    thread.join(10)
    assert len(store.ledger("box")) == 1  # type: ignore[attr-defined]
    assert poller.flush() is False
