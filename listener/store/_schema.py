"""The tables, as SQLAlchemy Core ``Table`` objects, and a UTC timestamp type.

One definition serves SQLite and PostgreSQL. Identifiers and sync states are ``TEXT``: EWS item
ids are ~150 characters of base64 and sync states several kilobytes, and neither has a documented
upper bound.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
)

__all__ = [
    "KEY_SCHEME",
    "UtcDateTime",
    "dead_letters",
    "ledger",
    "mailbox_leases",
    "metadata",
    "pending",
    "replicas",
    "schema_version",
    "sync_state",
]


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC ``datetime`` in and out, on every backend.

    SQLite has no time zones: SQLAlchemy stores the wall-clock digits and returns naive values, so
    values are converted to UTC and stored naive there (fixed-width text, which also keeps
    ``ORDER BY`` and ``<=`` on the column chronological). PostgreSQL's ``timestamptz`` returns
    values in the session time zone: they are converted back to UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            # A naive time is ambiguous (local? UTC?); refusing it catches the bug where it is made.
            raise ValueError(f"naive datetime {value.isoformat()} given to the state store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = MetaData()

# The ledger's current key scheme (see the ``key_scheme`` column).
KEY_SCHEME = 2

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UtcDateTime, nullable=False),
)

sync_state = Table(
    "sync_state",
    metadata,
    Column("mailbox", Text, primary_key=True),
    Column("folder", Text, primary_key=True),
    Column("state", Text, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

ledger = Table(
    "ledger",
    metadata,
    Column("idempotency_key", Text, primary_key=True),
    Column("handler", Text, primary_key=True),
    Column("mailbox", Text, nullable=False),
    Column("item_id", Text, nullable=False),
    Column("internet_message_id", Text, nullable=True),
    Column("handed_at", UtcDateTime, nullable=False),
    # Schema 3: who sent the message and when (listener.model.message_fingerprint), to tell a
    # different message that reuses a Message-ID from the one handed over under its key.
    Column("fingerprint", Text, nullable=True),
    # 1: a key written before schema 3 (it hashed the EWS item id); 2: the Message-ID key.
    Column("key_scheme", Integer, nullable=False, default=KEY_SCHEME),
    Index("ix_ledger_mailbox", "mailbox"),
)

pending = Table(
    "pending",
    metadata,
    Column("mailbox", Text, primary_key=True),
    Column("item_id", Text, primary_key=True),
    Column("idempotency_key", Text, nullable=False),
    Column("handlers", JSON, nullable=False),  # list of handler names still to do
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("last_error", Text, nullable=False),
    Column("first_seen_at", UtcDateTime, nullable=False),
    # Schema 4: the kind of mail source that issued item_id (ews, graph); ids are opaque to
    # everything but a source of that kind.
    Column("source", Text, nullable=False, default="ews", server_default="ews"),
    Column("internet_message_id", Text, nullable=True),  # schema 4
    Index("ix_pending_due", "mailbox", "next_attempt_at"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    # AUTOINCREMENT on SQLite: ids are never reused after a purge, so an id printed by
    # `dead-letters list` cannot later name a different letter.
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("mailbox", Text, nullable=False),
    Column("item_id", Text, nullable=False),
    Column("idempotency_key", Text, nullable=False),
    Column("handlers", JSON, nullable=False),
    Column("error", Text, nullable=False),
    Column("permanent", Boolean, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("subject", Text, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    # Schema 3: how to find the mail again when a crash came between its move to the
    # dead-letter folder and the record of its new item id.
    Column("internet_message_id", Text, nullable=True),
    Column("moved_to", Text, nullable=True),
    Column("source", Text, nullable=False, default="ews", server_default="ews"),  # schema 4
    Index("ix_dead_letters_mailbox", "mailbox"),
    sqlite_autoincrement=True,
)

# Schema 5 (issue 16): which replica owns each mailbox, under which epoch, until when. A mailbox
# is owned while ``owner`` is set and ``expires_at`` is in the future (the database's clock, never
# a replica's); every claim by a replica raises ``epoch``, and each commit of a poll is checked
# against the (owner, epoch) it was polled under (listener.store._leases).
mailbox_leases = Table(
    "mailbox_leases",
    metadata,
    Column("mailbox", Text, primary_key=True),
    Column("owner", Text, nullable=True),
    Column("epoch", BigInteger, nullable=False, default=0),
    Column("expires_at", UtcDateTime, nullable=True),
    Column("acquired_at", UtcDateTime, nullable=True),
    Column("renewed_at", UtcDateTime, nullable=True),
    Column("last_poll_at", UtcDateTime, nullable=True),
    Column("last_poll_ok", Boolean, nullable=True),
    Index("ix_mailbox_leases_owner", "owner"),
)

# Schema 5: the replicas sharing the database, for the fair share of each and `cluster status`.
replicas = Table(
    "cluster_replicas",
    metadata,
    Column("replica", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("heartbeat_at", UtcDateTime, nullable=False),
)
