"""The ``pending_messages`` gauge without a statement per idle poll (issue 16): a poll that found
nothing leaves the queue as it was; one ``GROUP BY`` a minute follows the rest."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from listener.abc import PendingEntry
from listener.daemon import _idle, _pending_refresher
from listener.observability import Metrics
from listener.poller import PollResult
from listener.scheduler import Scheduler
from listener.service import MailboxRunner
from listener.store import SqlStateStore, open_store
from tests.poller.fakes import FakeSource
from tests.poller.test_poller import make


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStateStore]:
    s = open_store(f"sqlite:///{tmp_path}/state.db")
    yield s
    s.close()


def _gauge(metrics: Metrics, mailbox: str) -> float | None:
    return metrics.registry.get_sample_value("ews_listener_pending_messages", {"mailbox": mailbox})


@pytest.mark.parametrize(
    ("field", "idle"),
    [
        (None, True),
        ("handed_over", False),
        ("failed", False),
        ("dead_lettered", False),
        ("already_done", False),
        ("unrouted", False),
        ("gone", False),
        ("error", False),
    ],
    ids=str,
)
def test_only_a_poll_that_touched_nothing_is_idle(field: str | None, idle: bool) -> None:
    result = PollResult("box")
    if field == "error":
        result.error = "boom"
    elif field is not None:
        setattr(result, field, 1)
    assert _idle(result) is idle


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
