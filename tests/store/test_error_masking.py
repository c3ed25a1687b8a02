"""Error texts are masked on their way into the state store (issue 11, point 7).

``dead-letters show`` printed ``Authorization: Bearer …`` that a handler had written to stderr:
the store kept it raw. Every stored error goes through ``commit``; it masks registered secrets
and token shapes before the row is written, so no later reader can leak them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from listener.abc import DeadLetter, PendingEntry
from listener.observability.redaction import forget_secrets, register_secret
from listener.store import SqlStateStore, open_store

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LEAKY = (
    "command 'push' exited with 1; stderr: curl: (22) 401 for "
    "Authorization: Bearer abc.def-ghi123 at https://user:P4ss@api.example/x?code=FUNCTIONKEY "
    "with api key reg1stered-k3y"
)
SECRETS = ("abc.def-ghi123", "P4ss", "FUNCTIONKEY", "reg1stered-k3y")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStateStore]:
    """A fresh SQLite store, with one registered secret."""
    register_secret("reg1stered-k3y")
    opened = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        yield opened
    finally:
        opened.close()
        forget_secrets()


def test_pending_and_dead_letter_errors_are_stored_masked(store: SqlStateStore) -> None:
    """Neither a pending entry's last_error nor a dead letter's error keeps a secret."""
    pending = PendingEntry(
        mailbox="orders",
        item_id="AAMk1",
        idempotency_key="k1",
        handlers=("push",),
        attempts=1,
        next_attempt_at=NOW,
        last_error=LEAKY,
        first_seen_at=NOW,
    )
    dead = DeadLetter(
        id=None,
        mailbox="orders",
        item_id="AAMk2",
        idempotency_key="k2",
        handlers=("push",),
        error=LEAKY,
        permanent=True,
        attempts=1,
        subject="Order 42",
        created_at=NOW,
    )
    store.commit("orders", "inbox", sync_state="s1", pending=[pending], dead=[dead])
    stored = [p.last_error for p in store.pending()] + [d.error for d in store.dead_letters()]
    assert len(stored) == 2
    for text in stored:
        assert "exited with 1" in text  # still says what happened
        for secret in SECRETS:
            assert secret not in text, text
