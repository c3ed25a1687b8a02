"""The pure decision of a message's fate: one table, no store, no source, no clock."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from listener.abc import FetchFailure, ItemRef, PendingEntry
from listener.pipeline import Delivered, GiveUp, Gone, Outcome, Retry, decide, decide_fetch_failure
from listener.pipeline.fate import retry_after_of
from listener.pipeline.settings import FailurePolicy

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
POLICY = FailurePolicy(max_attempts=3, backoff=10, backoff_max=600, jitter=0)
OK = Outcome(handler="a")
FLAKY = Outcome(handler="b", error="RuntimeError: down")
BUSY = Outcome(handler="b", error="Busy: 429", retry_after=120)
POISON = Outcome(handler="c", error="PermanentError: no", permanent=True)


def earlier(attempts: int, handlers: tuple[str, ...] = ("b",)) -> PendingEntry:
    return PendingEntry(
        mailbox="box",
        item_id="i1",
        idempotency_key="k1",
        handlers=handlers,
        attempts=attempts,
        next_attempt_at=NOW,
        last_error="",
        first_seen_at=NOW - timedelta(hours=1),
    )


@pytest.mark.parametrize(
    ("outcomes", "previous", "fate"),
    [
        pytest.param([OK], None, Delivered(), id="all-returned"),
        pytest.param([], None, Delivered(), id="nothing-to-do"),
        pytest.param(
            [OK, FLAKY],
            None,
            Retry(
                handlers=("b",),
                attempts=1,
                at=NOW + timedelta(seconds=10),
                delay=10,
                error="b: RuntimeError: down",
            ),
            id="transient-retries-only-the-failed-handler",
        ),
        pytest.param(
            [FLAKY],
            earlier(1),
            Retry(
                handlers=("b",),
                attempts=2,
                at=NOW + timedelta(seconds=20),
                delay=20,
                error="b: RuntimeError: down",
            ),
            id="backoff-grows",
        ),
        pytest.param(
            [BUSY],
            None,
            Retry(
                handlers=("b",),
                attempts=1,
                at=NOW + timedelta(seconds=120),
                delay=120,
                error="b: Busy: 429",
            ),
            id="retry-after-is-a-floor",
        ),
        pytest.param(
            [FLAKY],
            earlier(2),
            GiveUp(handlers=("b",), attempts=3, error="b: RuntimeError: down", permanent=False),
            id="attempts-exhausted",
        ),
        pytest.param(
            [OK, FLAKY, POISON],
            None,
            GiveUp(
                handlers=("b", "c"),
                attempts=1,
                error="b: RuntimeError: down; c: PermanentError: no",
                permanent=True,
            ),
            id="permanent-wins",
        ),
    ],
)
def test_decide(outcomes: list[Outcome], previous: PendingEntry | None, fate: object) -> None:
    """Each combination of handler outcomes and history has exactly one fate."""
    assert decide(outcomes, previous, POLICY, NOW, random.Random(1)) == fate


REF = ItemRef("i1")


@pytest.mark.parametrize(
    ("failure", "previous", "fate"),
    [
        pytest.param(FetchFailure(REF, "ErrorItemNotFound", gone=True), None, Gone(), id="gone"),
        pytest.param(
            FetchFailure(REF, "ErrorItemNotFound", gone=True),
            earlier(1, ("a",)),
            GiveUp(
                handlers=("a",),
                attempts=2,
                error="the item left the folder before it could be handed over (ErrorItemNotFound)",
                permanent=True,
            ),
            id="gone-while-pending",
        ),
        pytest.param(
            FetchFailure(REF, "ErrorServerBusy", transient=True),
            None,
            Retry(
                handlers=(),
                attempts=1,
                at=NOW + timedelta(seconds=10),
                delay=10,
                error="ErrorServerBusy",
            ),
            id="transient-fetch",
        ),
        pytest.param(
            FetchFailure(REF, "ErrorServerBusy", transient=True),
            earlier(2),
            GiveUp(handlers=("b",), attempts=3, error="ErrorServerBusy", permanent=False),
            id="transient-fetch-exhausted",
        ),
        pytest.param(
            FetchFailure(REF, "conversion failed"),
            None,
            GiveUp(handlers=(), attempts=1, error="conversion failed", permanent=True),
            id="unconvertible",
        ),
    ],
)
def test_decide_fetch_failure(
    failure: FetchFailure, previous: PendingEntry | None, fate: object
) -> None:
    """An item that could not be fetched: gone, retried, or a dead letter."""
    assert decide_fetch_failure(failure, previous, POLICY, NOW, random.Random(1)) == fate


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(30, 30.0), ("7.5", 7.5), (None, 0.0), ("soon", 0.0), (float("nan"), 0.0), (-5, 0.0)],
)
def test_retry_after_of(value: object, seconds: float) -> None:
    """A handler error's retry_after: a positive finite number of seconds, else none."""
    error = RuntimeError("busy")
    error.retry_after = value  # type: ignore[attr-defined]
    assert retry_after_of(error) == seconds
