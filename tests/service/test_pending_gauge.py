"""The ``pending_messages`` gauge without a statement per poll that left the retry queue alone
(issues 15 and 16): an idle poll, or one that only handed new mail over (a push notification's
poll); one ``GROUP BY`` a minute follows the rest."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from listener.abc import PendingEntry
from listener.daemon import _pending_refresher, _pending_untouched
from listener.observability import Metrics
from listener.poller import PollResult
from listener.scheduler import Scheduler
from listener.service import MailboxRunner
from listener.store import SqlStateStore, open_store
from tests.poller.fakes import FakeSource
from tests.poller.test_poller import Clock, make


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStateStore]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def _gauge(metrics: Metrics, mailbox: str) -> float | None:
    return metrics.registry.get_sample_value("ews_listener_pending_messages", {"mailbox": mailbox})


@pytest.mark.parametrize(
    ("field", "untouched"),
    [
        (None, True),
        ("handed_over", True),
        ("already_done", True),
        ("unrouted", True),
        ("dead_lettered", True),
        ("retried", False),
        ("failed", False),
        ("gone", False),
        ("error", False),
    ],
    ids=str,
)
def test_a_poll_that_took_up_or_parked_nothing_left_the_queue_alone(
    field: str | None, untouched: bool
) -> None:
    result = PollResult("box")
    if field == "error":
        result.error = "boom"
    elif field is not None:
        setattr(result, field, 1)
    assert _pending_untouched(result) is untouched


def test_a_poll_counts_the_due_retries_it_took_up(store: SqlStateStore) -> None:
    """New mail handed over: nothing retried (no statement for the gauge); a transient failure
    parks it (failed); the poll after its back-off takes it up (retried) and resolves it."""
    source = FakeSource()
    clock = Clock()
    poller, hs = make(store, source, clock=clock)
    poller.poll()  # the round begins
    source.deliver("fine")
    first = poller.poll()
    assert (first.handed_over, first.retried, first.failed) == (1, 0, 0)
    assert _pending_untouched(first)
    hs["h"].fail_times["flaky"] = 1
    source.deliver("flaky")
    parked = poller.poll()
    assert (parked.failed, parked.retried) == (1, 0)
    assert not _pending_untouched(parked)
    clock.advance(3600)
    retried = poller.poll()
    assert (retried.retried, retried.handed_over) == (1, 1)
    assert not _pending_untouched(retried)
    assert store.pending_count("box") == 0


def test_the_refresh_sets_every_scheduled_mailbox_from_one_query(store: SqlStateStore) -> None:
    """Counts come from the store, 0 for a mailbox without entries; mailboxes this process does
    not schedule (another replica's) are left alone."""
    now = datetime(2026, 12, 2, tzinfo=UTC)
    store.commit(
        "a",
        "inbox",
        sync_state=None,
        pending=[
            PendingEntry(
                mailbox="a",
                item_id=f"i{n}",
                idempotency_key="",
                handlers=(),
                attempts=1,
                next_attempt_at=now,
                last_error="",
                first_seen_at=now,
                source="fake",
            )
            for n in range(2)
        ],
    )
    metrics = Metrics()
    scheduler = Scheduler(max_workers=1, jitter=0)
    for name in ("a", "b"):
        poller, _ = make(store, FakeSource())
        poller.settings = poller.settings.__class__(name=name, credential="cred")
        scheduler.add(MailboxRunner(poller, interval=60))
    _pending_refresher(store, scheduler, metrics)()
    assert _gauge(metrics, "a") == 2
    assert _gauge(metrics, "b") == 0
    assert _gauge(metrics, "c") is None
