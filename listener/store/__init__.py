"""Durable state: sync states, the ledger, pending retries and dead letters (SQLAlchemy 2 Core).

SQLite by default (``sqlite:///var/lib/ews-listener/state.db``), PostgreSQL by URL
(``postgresql://user@host/db``, driven by psycopg 3)::

    store = open_store("sqlite:///var/state.db")
    state = store.get_sync_state("sales", "inbox")
    store.commit("sales", "inbox", sync_state=new_state, successes=[...], pending=[...])
    store.close()

The sync state only moves forward in the same transaction that records every message of the
page as handed over (ledger) or parked (pending): see ``SqlStateStore.commit``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from listener.store._engine import EngineOptions, build_engine, parse_url
from listener.store._errors import LeaseLost, StoreError, translate_errors
from listener.store._leases import (
    LEASES_CHANNEL,
    POLL_CHANNEL,
    Fence,
    LeaseRow,
    LeaseSignals,
    LeaseTable,
    ReplicaRow,
    parse_poll_request,
)
from listener.store._migrations import LATEST as SCHEMA_VERSION
from listener.store._store import SqlStateStore

__all__ = [
    "LEASES_CHANNEL",
    "POLL_CHANNEL",
    "SCHEMA_VERSION",
    "EngineOptions",
    "Fence",
    "LeaseLost",
    "LeaseRow",
    "LeaseSignals",
    "LeaseTable",
    "ReplicaRow",
    "SqlStateStore",
    "StoreError",
    "open_store",
    "parse_poll_request",
]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def open_store(
    url: str,
    *,
    create: bool = True,
    busy_timeout: float = 5.0,
    connect_timeout: float = 10.0,
    pool_size: int = 8,
    max_overflow: int = 8,
    pool_timeout: float = 30.0,
    clock: Callable[[], datetime] = _utcnow,
) -> SqlStateStore:
    """Open the state database at ``url``, creating or migrating its schema, and check it works.

    ``create=False`` creates nothing (no file, no tables) and fails unless the database exists at
    the current schema version: for commands that only read, such as ``dead-letters list``.
    ``busy_timeout`` is how long SQLite waits for another process's write lock;
    ``connect_timeout`` bounds PostgreSQL connection attempts. ``clock`` stamps sync states.
    Raises ``StoreError`` (never showing a password) when the database is unreachable,
    read-only, locked, corrupt, or newer than this ews-listener.
    """
    parsed = parse_url(url)
    options = EngineOptions(
        busy_timeout=busy_timeout,
        connect_timeout=connect_timeout,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=pool_timeout,
    )
    with translate_errors(parsed, busy_timeout=busy_timeout, action="opening the state store"):
        engine = build_engine(parsed, options, create=create)
    store = SqlStateStore(engine, parsed, busy_timeout=busy_timeout, clock=clock)
    try:
        store.migrate(create=create)
    except BaseException:
        store.close()
        raise
    return store
