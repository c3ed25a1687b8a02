"""``StoreError`` and the translation of driver errors into messages a person can act on.

Driver messages are kept (they say *why*: "Connection refused", "file is not a database"), but a
URL is only ever shown with its password masked, and a password that a driver echoes is scrubbed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from listener.errors import ListenerError

__all__ = ["LeaseLost", "StoreError", "describe_url", "translate_errors"]


class StoreError(ListenerError):
    """The state database cannot be opened, read or written. The message never holds a password."""


class LeaseLost(StoreError):
    """A commit was refused: this replica no longer holds the mailbox's lease under the epoch its
    poll started with (it expired, or another replica claimed the mailbox). Nothing of that
    commit was written; the mailbox's poll must end at once (issue 16, fencing)."""

    def __init__(self, mailbox: str, detail: str) -> None:
        super().__init__(f"mailbox {mailbox!r}: lease lost ({detail}); nothing was committed")
        self.mailbox = mailbox


def describe_url(url: URL) -> str:
    """``url`` for people: the path of a SQLite file, otherwise the URL with ``***`` as password."""
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    return url.render_as_string(hide_password=True)


def _scrub(text: str, url: URL) -> str:
    if url.password:
        text = text.replace(str(url.password), "***")
    return text.strip()


def _driver_message(error: sa_exc.DBAPIError) -> str:
    # The DBAPI exception's own text, without SQLAlchemy's "[SQL: ...] [parameters: ...]" tail.
    return str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else repr(error.orig)


def _sqlite_error(error: sa_exc.DBAPIError, where: str, busy_timeout: float) -> StoreError:
    text = _driver_message(error)
    lowered = text.lower()
    if "readonly" in lowered or "read-only" in lowered:
        return StoreError(
            f"state database {where} is read-only ({text}): SQLite in WAL mode needs write access "
            f"to the file and to its directory (for the -wal and -shm files beside it); fix the "
            f"permissions or point state.url elsewhere"
        )
    if "locked" in lowered or "busy" in lowered:
        return StoreError(
            f"state database {where} stayed locked by another process for longer than the busy "
            f"timeout ({busy_timeout:g} s): is a second ews-listener using the same file? Stop it, "
            f"raise state.busy_timeout, or give each instance its own state.url"
        )
    if "not a database" in lowered or "malformed" in lowered or "corrupt" in lowered:
        return StoreError(
            f"state database {where} is not a SQLite database or is corrupt ({text}): restore it "
            f"from a backup, or move it away to start afresh (sync states are then rebuilt per "
            f"start_from and the ledger is lost)"
        )
    if "unable to open" in lowered:
        return StoreError(
            f"cannot open state database {where} ({text}): check that its directory exists and "
            f"is writable by this user, or point state.url elsewhere"
        )
    return StoreError(f"state database {where}: {text}")


@contextmanager
def translate_errors(url: URL, *, busy_timeout: float = 0.0, action: str = "") -> Iterator[None]:
    """Turn SQLAlchemy and driver errors raised inside the block into ``StoreError``."""
    where = describe_url(url)
    try:
        yield
    except StoreError:
        raise
    except (sa_exc.OperationalError, sa_exc.DatabaseError) as error:
        if url.get_backend_name() == "sqlite":
            # ``from error`` keeps the SQL for debugging; SQLite URLs hold no password.
            raise _sqlite_error(error, where, busy_timeout) from error
        text = _scrub(_driver_message(error), url)
        during = f" ({action})" if action else ""
        sqlstate = getattr(error.orig, "sqlstate", None)
        # No SQLSTATE: libpq failed before a session existed (refused, timeout, DNS, bad
        # password); classes 08 (connection), 28 (authorization) and 3D (no such database)
        # also mean "cannot connect". ``from None`` everywhere: a driver may have put the
        # connection string into the chained exception's text.
        if sqlstate is None or sqlstate[:2] in {"08", "28", "3D"}:
            raise StoreError(
                f"cannot reach state database {where}{during}: {text}: check that PostgreSQL "
                f"is running and the URL (host, port, user, database) is right"
            ) from None
        raise StoreError(f"state database {where}{during}: {text}") from None
    except sa_exc.TimeoutError:
        raise StoreError(
            f"state database {where}: no pooled connection became free within the pool timeout "
            f"(more threads than pool_size + max_overflow, or a transaction left open)"
        ) from None
    except sqlite3.Error as error:  # raised by PRAGMAs run in the connect hook
        raise StoreError(f"state database {where}: {error}") from error
