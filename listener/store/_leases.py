"""Mailbox leases in PostgreSQL: which replica owns each mailbox, under which epoch, until when.

The statements behind ``listener.cluster.LeaseManager`` (issue 16). Every time is the database's
own clock (``now()``), never a replica's: replicas whose clocks disagree still agree on whether a
lease has expired. A mailbox is owned while ``owner`` is set and ``expires_at > now()``.

- ``claim`` takes free or expired mailboxes with ``SELECT ... FOR UPDATE SKIP LOCKED``: two
  replicas claiming at once never wait for each other nor take the same row, and a row whose
  fenced commit is in progress (locked by ``check_fence``) is simply skipped. Each claim raises
  the mailbox's ``epoch``.
- ``renew`` extends every live lease of a replica in one ``UPDATE``; its ``RETURNING`` is the
  replica's ownership as the database sees it (a lease that expired is not renewed: it is lost).
- ``check_fence`` runs first in the transaction of every commit of a poll and locks the lease's
  row: the commit is written only if the lease is still (owner, epoch) and unexpired, and no
  claim can slip in before the commit ends.

PostgreSQL only: the tables exist on SQLite too (schema 5), where one process needs no lease.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, literal, select, update
from sqlalchemy.dialects import postgresql

from listener.store import _schema as tb
from listener.store._errors import LeaseLost

__all__ = [
    "LEASES_CHANNEL",
    "POLL_CHANNEL",
    "Fence",
    "LeaseRow",
    "LeaseSignals",
    "LeaseTable",
    "ReplicaRow",
    "check_fence",
    "parse_poll_request",
    "poll_request",
]

Transaction = Callable[[str], AbstractContextManager[Connection]]

# PostgreSQL LISTEN/NOTIFY channels. Payloads start with the schema ("<schema>/..."), so that
# deployments in different schemas of one database ignore each other's signals.
# A replica joined, left or released leases: the others look again now, not at their next tick.
LEASES_CHANNEL = "ews_listener_leases"
# "Poll this mailbox" (a push notification that reached a replica which does not own it).
POLL_CHANNEL = "ews_listener_poll"


@dataclass(frozen=True)
class Fence:
    """The lease a poll runs under: its commits are accepted only while it still holds."""

    mailbox: str
    owner: str
    epoch: int


@dataclass(frozen=True, kw_only=True)
class LeaseRow:
    """One mailbox's lease as ``cluster status`` shows it."""

    mailbox: str
    owner: str | None
    epoch: int
    expires_at: datetime | None
    acquired_at: datetime | None
    renewed_at: datetime | None
    last_poll_at: datetime | None
    last_poll_ok: bool | None
    live: bool  # owned and not expired, by the database's clock


@dataclass(frozen=True, kw_only=True)
class ReplicaRow:
    """One replica as ``cluster status`` shows it."""

    replica: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    live: bool  # its heartbeat is younger than a lease


# The statements of a lease transaction or a fenced commit follow each other at once; one left
# idle for longer belongs to a replica paused or cut off with lease rows locked, where no other
# replica could claim them (SKIP LOCKED passes them by) however long ago they expired: PostgreSQL
# ends such a session after this long, rolling it back (shorter than any sensible lease).
IDLE_IN_TRANSACTION_MS = 2000


def poll_request(mailbox: str, lifecycle: tuple[str, str] | None = None) -> str:
    """The payload of a ``POLL_CHANNEL`` signal: the mailbox's name (names have no spaces,
    ``NAME_PATTERN``), then the subscription id and the lifecycle event when there is one."""
    return mailbox if lifecycle is None else " ".join((mailbox, *lifecycle))


def parse_poll_request(payload: str) -> tuple[str, tuple[str, str] | None]:
    """(mailbox, (subscription id, lifecycle event) or None) of a ``POLL_CHANNEL`` payload."""
    mailbox, _, rest = payload.partition(" ")
    subscription, _, event = rest.partition(" ")
    return mailbox, ((subscription, event) if subscription and event else None)


def _bounded(conn: Connection) -> None:
    """End this transaction's session if it idles (see ``IDLE_IN_TRANSACTION_MS``)."""
    conn.execute(
        select(
            func.set_config(
                "idle_in_transaction_session_timeout", str(IDLE_IN_TRANSACTION_MS), True
            )
        )
    )


def check_fence(conn: Connection, fence: Fence) -> None:
    """Lock ``fence.mailbox``'s lease row and raise ``LeaseLost`` unless ``fence`` still holds.

    Safe however long the rest of the transaction takes: while the row is locked no replica can
    claim the mailbox, so nobody commits under another epoch before this transaction ends.
    """
    c = tb.mailbox_leases.c
    _bounded(conn)
    row = conn.execute(
        select(c.owner, c.epoch, (c.expires_at > func.now()).label("live"))
        .where(c.mailbox == fence.mailbox)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise LeaseLost(fence.mailbox, "it has no lease")
    if row.owner != fence.owner or row.epoch != fence.epoch:
        holder = f"owned by {row.owner!r}" if row.owner else "released"
        raise LeaseLost(
            fence.mailbox, f"polled under epoch {fence.epoch}, now epoch {row.epoch}, {holder}"
        )
    if not row.live:
        raise LeaseLost(fence.mailbox, f"epoch {fence.epoch} expired before the commit")


def _seconds(value: float) -> Any:
    # now() + interval: bound as a Python timedelta, which psycopg sends as an interval.
    return literal(timedelta(seconds=value))


def _notify(conn: Connection, channel: str, payload: Any) -> None:
    # Delivered when the transaction commits, and only then.
    conn.execute(
        select(func.pg_notify(channel, func.coalesce(func.current_schema(), "") + "/" + payload))
    )


def _lease_rows(conn: Connection, mailboxes: Iterable[str]) -> None:
    rows = [{"mailbox": name, "epoch": 0} for name in sorted(set(mailboxes))]
    if rows:
        conn.execute(
            postgresql.insert(tb.mailbox_leases).on_conflict_do_nothing(
                index_elements=[tb.mailbox_leases.c.mailbox]
            ),
            rows,
        )


class LeaseSignals:
    """A connection that LISTENs on both channels (psycopg 3, autocommit, outside the pool)."""

    def __init__(self, connection: Any) -> None:
        self._conn = connection
        connection.rollback()  # the pool's pre-ping may have opened a transaction
        self._conn.autocommit = True
        self._conn.execute(f"LISTEN {LEASES_CHANNEL}")
        self._conn.execute(f"LISTEN {POLL_CHANNEL}")
        schema = self._conn.execute("SELECT coalesce(current_schema(), '')").fetchone()[0]
        self._prefix = f"{schema}/"

    def wait(self, timeout: float) -> list[tuple[str, str]]:
        """The (channel, payload) signals of this schema received within ``timeout`` seconds
        (returns at the first; an empty list when none came)."""
        got = []
        for note in self._conn.notifies(timeout=timeout, stop_after=1):
            if note.payload.startswith(self._prefix):
                got.append((note.channel, note.payload[len(self._prefix) :]))
        return got

    def close(self) -> None:
        with suppress(Exception):  # a broken connection is what we are closing
            self._conn.close()


class LeaseTable:
    """The lease and replica statements, each in its own short transaction of the store."""

    def __init__(
        self, read: Transaction, write: Transaction, connect: Callable[[], Any] | None = None
    ) -> None:
        self._read = read
        self._write = write
        self._connect = connect

    def listen(self) -> LeaseSignals:
        """A new connection listening for the cluster's signals (close it when done)."""
        if self._connect is None:
            raise RuntimeError("this lease table cannot open connections of its own")
        return LeaseSignals(self._connect())

    def request_poll(self, mailbox: str, *, lifecycle: tuple[str, str] | None = None) -> None:
        """Ask the replica that owns ``mailbox`` to poll it soon (``POLL_CHANNEL``); with
        ``lifecycle`` (subscription id, event), to act on that Graph lifecycle notification."""
        with self._write("forwarding a poll request") as conn:
            _bounded(conn)
            _notify(conn, POLL_CHANNEL, literal(poll_request(mailbox, lifecycle)))

    def join(self, replica: str, *, host: str, pid: int, mailboxes: Iterable[str]) -> None:
        """Record ``replica`` (its heartbeat now) and give each of ``mailboxes`` a lease row."""
        r = tb.replicas
        stmt = postgresql.insert(r).values(
            replica=replica, host=host, pid=pid, started_at=func.now(), heartbeat_at=func.now()
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=[r.c.replica], set_={"heartbeat_at": func.now()}
        )
        with self._write("joining the cluster") as conn:
            _bounded(conn)
            conn.execute(stmt)
            _notify(conn, LEASES_CHANNEL, literal(replica))
            _lease_rows(conn, mailboxes)

    def ensure(self, mailboxes: Iterable[str]) -> None:
        """Give each of ``mailboxes`` a lease row (free) unless it has one (``once``)."""
        with self._write("adding lease rows") as conn:
            _bounded(conn)
            _lease_rows(conn, mailboxes)

    def beat(self, replica: str, *, host: str, pid: int, lease: float) -> list[str]:
        """Renew ``replica``'s heartbeat; returns the live replicas' ids, sorted.

        A replica is live while its heartbeat is younger than a lease. Rows of replicas silent
        for ten leases are removed (``cluster status`` shows the others as not live).
        """
        r = tb.replicas.c
        upsert = postgresql.insert(tb.replicas).values(
            replica=replica, host=host, pid=pid, started_at=func.now(), heartbeat_at=func.now()
        )
        upsert = upsert.on_conflict_do_update(
            index_elements=[r.replica], set_={"heartbeat_at": func.now()}
        )
        with self._write("renewing the replica's heartbeat") as conn:
            _bounded(conn)
            conn.execute(upsert)
            conn.execute(
                delete(tb.replicas).where(r.heartbeat_at < func.now() - _seconds(10 * lease))
            )
            live = conn.execute(
                select(r.replica)
                .where(r.heartbeat_at > func.now() - _seconds(lease))
                .order_by(r.replica)
            )
            return list(live.scalars())

    def renew(self, replica: str, *, lease: float) -> dict[str, int]:
        """Extend every unexpired lease of ``replica`` by ``lease`` seconds, in one statement;
        returns what it owns now (mailbox → epoch)."""
        c = tb.mailbox_leases.c
        stmt = (
            update(tb.mailbox_leases)
            .where(c.owner == replica, c.expires_at > func.now())
            .values(expires_at=func.now() + _seconds(lease), renewed_at=func.now())
            .returning(c.mailbox, c.epoch)
        )
        with self._write("renewing leases") as conn:
            _bounded(conn)
            return {mailbox: int(epoch) for mailbox, epoch in conn.execute(stmt)}

    def claim(
        self, replica: str, mailboxes: Sequence[str], *, limit: int, lease: float
    ) -> dict[str, int]:
        """Take up to ``limit`` of ``mailboxes`` that are free or expired; returns them with
        their new epochs. Rows other transactions hold are skipped, not waited for."""
        if limit <= 0 or not mailboxes:
            return {}
        c = tb.mailbox_leases.c
        free = (
            select(c.mailbox)
            .where(
                c.mailbox.in_(sorted(set(mailboxes))),
                (c.owner.is_(None)) | (c.expires_at.is_(None)) | (c.expires_at <= func.now()),
            )
            .order_by(c.mailbox)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        stmt = (
            update(tb.mailbox_leases)
            .where(c.mailbox.in_(free.scalar_subquery()))
            .values(
                owner=replica,
                epoch=c.epoch + 1,
                expires_at=func.now() + _seconds(lease),
                acquired_at=func.now(),
                renewed_at=func.now(),
            )
            .returning(c.mailbox, c.epoch)
        )
        with self._write("claiming leases") as conn:
            _bounded(conn)
            return {mailbox: int(epoch) for mailbox, epoch in conn.execute(stmt)}

    def release(self, replica: str, mailboxes: Iterable[str] | None = None) -> list[str]:
        """Give up ``replica``'s leases of ``mailboxes`` (all when None): free at once for the
        others. Returns the mailboxes released."""
        c = tb.mailbox_leases.c
        stmt = update(tb.mailbox_leases).where(c.owner == replica)
        if mailboxes is not None:
            names = sorted(set(mailboxes))
            if not names:
                return []
            stmt = stmt.where(c.mailbox.in_(names))
        stmt = stmt.values(owner=None, expires_at=func.now()).returning(c.mailbox)
        with self._write("releasing leases") as conn:
            _bounded(conn)
            released = sorted(conn.execute(stmt).scalars())
            if released:
                _notify(conn, LEASES_CHANNEL, literal(replica))
            return released

    def leave(self, replica: str) -> list[str]:
        """Release every lease of ``replica`` and remove it from the replicas, in one
        transaction: the others count one replica fewer at their next look."""
        c = tb.mailbox_leases.c
        with self._write("leaving the cluster") as conn:
            _bounded(conn)
            released = conn.execute(
                update(tb.mailbox_leases)
                .where(c.owner == replica)
                .values(owner=None, expires_at=func.now())
                .returning(c.mailbox)
            )
            names = sorted(released.scalars())
            conn.execute(delete(tb.replicas).where(tb.replicas.c.replica == replica))
            _notify(conn, LEASES_CHANNEL, literal(replica))
            return names

    def record_polls(self, replica: str, polls: Mapping[str, tuple[datetime, bool]]) -> None:
        """Note the last poll of each mailbox ``replica`` owns (for ``cluster status``), in one
        batch of updates."""
        if not polls:
            return
        c = tb.mailbox_leases.c
        stmt = (
            update(tb.mailbox_leases)
            .where(c.mailbox == bindparam("m"), c.owner == replica)
            .values(last_poll_at=bindparam("at"), last_poll_ok=bindparam("ok"))
        )
        rows = [{"m": mailbox, "at": at, "ok": ok} for mailbox, (at, ok) in sorted(polls.items())]
        with self._write("recording polls") as conn:
            _bounded(conn)
            conn.execute(stmt, rows)

    def now(self) -> datetime:
        """The database's clock, which every lease time is on."""
        with self._read("reading the clock") as conn:
            value = conn.execute(select(func.now())).scalar_one()
            assert isinstance(value, datetime)
            return value.astimezone(UTC)

    def leases(self) -> list[LeaseRow]:
        """Every mailbox's lease, by mailbox."""
        c = tb.mailbox_leases.c
        live = (c.owner.is_not(None)) & (c.expires_at > func.now())
        query = select(tb.mailbox_leases, live.label("live")).order_by(c.mailbox)
        with self._read("reading leases") as conn:
            return [
                LeaseRow(**{**row._asdict(), "live": bool(row.live)}) for row in conn.execute(query)
            ]

    def replicas(self, *, lease: float) -> list[ReplicaRow]:
        """Every recorded replica, by id; ``live`` by a heartbeat younger than ``lease`` s."""
        r = tb.replicas.c
        live = r.heartbeat_at > func.now() - _seconds(lease)
        query = select(tb.replicas, live.label("live")).order_by(r.replica)
        with self._read("reading replicas") as conn:
            return [
                ReplicaRow(**{**row._asdict(), "live": bool(row.live)})
                for row in conn.execute(query)
            ]
