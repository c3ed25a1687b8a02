"""The small interfaces the pipeline is built from; implementations live in plural packages.

``SecretSource`` (``secrets/``), ``TokenProvider`` (``auth/``), ``MailSource`` and
``SourceFactory`` (``sources/ews/``, ``sources/graph/``), ``Handler`` (``handlers/``) and
``StateStore`` (``store/``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from pydantic import SecretStr

from listener.model import Message
from listener.notify import NotificationChannel, NotifyHooks, Wake, Watch

__all__ = [
    "AccessToken",
    "ChangePage",
    "DeadLetter",
    "FetchFailure",
    "Handler",
    "ItemRef",
    "LedgerEntry",
    "MailSource",
    "PendingEntry",
    "ProbeStep",
    "SecretSource",
    "SourceFactory",
    "StateStore",
    "TokenProvider",
]


# --- secrets -----------------------------------------------------------------------------------


@runtime_checkable
class SecretSource(Protocol):
    """Where one secret lives. ``read`` is called when the secret is needed, never at import."""

    def read(self) -> SecretStr:
        """The current value; raises ``SecretError`` with a message that never holds it."""
        ...

    def describe(self) -> str:
        """A masked, human description such as ``env:SALES_SECRET`` or ``file:/run/secrets/x``."""
        ...


# --- tokens ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessToken:
    """An OAuth 2.0 access token; the token itself never appears in ``repr``."""

    token: str = field(repr=False)
    expires_at: datetime  # timezone-aware, UTC
    token_type: str = "Bearer"  # noqa: S105 - the scheme name, not a secret
    scopes: tuple[str, ...] = ()


class TokenProvider(Protocol):
    """Hands out access tokens for one credential, cached and renewed before expiry."""

    name: str

    def get_token(self, *, force_refresh: bool = False) -> AccessToken:
        """A token valid for at least the renewal margin; ``force_refresh`` skips the cache."""
        ...

    def invalidate(self, token: str) -> None:
        """Forget ``token`` (the server answered 401 with it); the next call fetches a new one."""
        ...


# --- mail source -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemRef:
    """An item of a mail source, by the id that source gave it: opaque to everything else.

    The pipeline stores it (pending queue, dead letters) beside the ``kind`` of the source that
    issued it, and hands it back only to a source of that kind.
    """

    item_id: str


@dataclass(frozen=True)
class ChangePage:
    """One page of changes in a folder since a sync state."""

    created: tuple[ItemRef, ...]  # new in the folder (delivered, moved or copied in)
    sync_state: str  # the position after this page; persist it with the page's outcome
    last_page: bool  # False: call ``changes`` again with ``sync_state`` for more
    # True: the server listed no change of any kind since the state asked with (and the source
    # left none out), so that state stays as good as ``sync_state``: a sync from either lists
    # the same changes. The poller then need not store the new one (an idle poll writes nothing).
    unchanged: bool = False


@dataclass(frozen=True)
class FetchFailure:
    """An item ``fetch`` could not turn into a ``Message``."""

    ref: ItemRef
    error: str  # what a person reads in `dead-letters show`: say what failed and what to do
    gone: bool = False  # the item no longer exists (deleted or moved away)
    # True: the server or the network failed (retried with back-off). False: retrying cannot
    # help, the item is dead-lettered at once as permanent, e.g. when the source's own conversion
    # of what the server sent fails: a bug to report, not an outage (issue 11, point 5).
    transient: bool = False


@dataclass(frozen=True)
class ProbeStep:
    """One step of ``MailSource.probe``: what was tried and what came of it."""

    name: str  # "token", "mailbox", "folder", "items"
    ok: bool
    detail: str  # one line a person reads: what worked, or what failed and what to do


class MailSource(Protocol):
    """One watched folder of one mailbox, as seen by the pipeline.

    The seam between the pipeline and a mail protocol (EWS, Microsoft Graph): nothing on this
    side knows a protocol. Failures are ``listener.errors.SourceError`` subclasses (sync state
    lost, throttled, gone, denied, unauthorized, unavailable); item ids and sync states are opaque
    strings that only a source of the same ``kind`` reads.
    """

    kind: str  # "ews", "graph", ...: recorded with every sync state and item id it issues
    mailbox: str
    folder: str
    page_limit: int  # the most changes one ``changes`` call may ask for

    def changes(self, sync_state: str | None, max_changes: int) -> ChangePage:
        """Items created since ``sync_state`` (None: from the beginning of the folder)."""
        ...

    def current_state(self) -> str:
        """A sync state at the folder's present end, for ``start_from = "new"``."""
        ...

    def unread(self) -> Sequence[ItemRef]:
        """Items in the folder not yet read (for ``start_from = "unread"``)."""
        ...

    def fetch(self, refs: Sequence[ItemRef]) -> list[Message | FetchFailure]:
        """The messages for ``refs``, in order, bound to a content loader."""
        ...

    def mark_read(self, refs: Sequence[ItemRef]) -> list[str | None]:
        """Mark read in bulk; per ref None on success or the error text."""
        ...

    def move(self, refs: Sequence[ItemRef], folder_path: str) -> list[ItemRef | str]:
        """Move in bulk to a folder path (created if missing); per ref its new ref or the error."""
        ...

    def categorize(self, refs: Sequence[ItemRef], category: str) -> list[str | None]:
        """Add a category in bulk; per ref None or the error text."""
        ...

    def delete(self, refs: Sequence[ItemRef]) -> list[str | None]:
        """Move to Deleted Items in bulk; per ref None or the error text."""
        ...

    def find(self, folder_path: str, internet_message_id: str) -> ItemRef | None:
        """The item of ``folder_path`` that carries ``internet_message_id``, or None.

        How ``dead-letters replay`` finds mail whose move to the dead-letter folder happened but
        whose new item id was never recorded (the process died, or the answer was lost).
        """
        ...

    def probe(self) -> Iterator[ProbeStep]:
        """Check the way to the folder step by step (token, mailbox, folder, items), stopping
        after the first step that fails: what ``mailbox test`` and ``credentials validate
        --mailbox`` print. Reads nothing into the pipeline and changes nothing."""
        ...

    def close(self) -> None:
        """Release what this source holds (sessions are shared and closed by their owner)."""
        ...


class SourceFactory(Protocol):
    """Builds the mail sources of one protocol and owns what they share (sessions, gates)."""

    kind: str
    # (operation, outcome) of every request to the mail server, for metrics
    on_request: Callable[[str, str], None] | None
    # (credential, seconds) whenever the server asks a credential to back off
    on_back_off: Callable[[str, float], None] | None

    def source(self, name: str, mailbox: Any, *, folder: str | None = None) -> MailSource:
        """A source for the configured mailbox ``name`` (cheap: no I/O until first use);
        ``folder`` overrides the watched folder (replay of mail moved elsewhere)."""
        ...

    def notifications(
        self, watches: Sequence[Watch], wake: Wake, hooks: NotifyHooks
    ) -> NotificationChannel:
        """The push channel of this protocol for ``watches`` (issue 15: EWS streaming
        subscriptions, Graph change notifications); built, not started (no I/O)."""
        ...

    def close(self) -> None:
        """Close every session of every source this factory built."""
        ...


# --- handlers ----------------------------------------------------------------------------------


class Handler(Protocol):
    """Does the work for one message: returns on success, raises on failure.

    Raise ``listener.errors.PermanentError`` when trying again cannot help; any other exception is
    transient and the message is retried with back-off.
    """

    name: str

    def __call__(self, message: Message) -> None: ...

    def close(self) -> None: ...


# --- state -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LedgerEntry:
    """A successful hand-over of one message to one handler."""

    idempotency_key: str
    handler: str
    mailbox: str
    item_id: str
    internet_message_id: str | None
    handed_at: datetime
    fingerprint: str | None = None  # listener.model.message_fingerprint of what was handed over


@dataclass(frozen=True, kw_only=True)
class PendingEntry:
    """A message waiting for a retry of the handlers that have not yet succeeded."""

    mailbox: str  # the mailbox's configured name
    item_id: str
    idempotency_key: str
    handlers: tuple[str, ...]  # still to do
    attempts: int
    next_attempt_at: datetime
    last_error: str
    first_seen_at: datetime
    source: str = "ews"  # the kind of source that issued ``item_id``
    # How a source of another kind finds the mail again after the mailbox switched protocol.
    internet_message_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class DeadLetter:
    """A message that will not be retried automatically; ``replay`` hands it over again."""

    id: int | None  # assigned by the store
    mailbox: str
    item_id: str
    idempotency_key: str
    handlers: tuple[str, ...]
    error: str
    permanent: bool  # True: a PermanentError; False: transient failures ran out of attempts
    attempts: int
    subject: str
    created_at: datetime
    internet_message_id: str | None = None
    # The dead-letter folder the mail was moved (or was being moved) to: if the process died
    # between that move and the record of the new item id, replay finds it there by Message-ID.
    moved_to: str | None = None
    source: str = "ews"  # the kind of source that issued ``item_id``


class StateStore(Protocol):
    """Durable state: sync states, the ledger, pending retries and dead letters."""

    def get_sync_state(self, mailbox: str, folder: str) -> str | None: ...

    def done(self, keys: Sequence[str]) -> set[tuple[str, str]]:
        """The (idempotency_key, handler) pairs already in the ledger among ``keys``."""
        ...

    def handed_over(self, keys: Sequence[str]) -> dict[tuple[str, str], str | None]:
        """The ledger's (idempotency_key, handler) pairs among ``keys``, with the fingerprint of
        the message handed over under each (None for entries older than store schema 3)."""
        ...

    def adopt_legacy_keys(self, addresses: Mapping[str, str]) -> int:
        """Re-key ledger entries written before store schema 3 (mailbox name → SMTP address)."""
        ...

    def dead_lettered(self, keys: Sequence[str]) -> set[str]:
        """The idempotency keys among ``keys`` that have a dead letter."""
        ...

    def due_pending(self, mailbox: str, now: datetime, limit: int) -> list[PendingEntry]: ...

    def pending_count(self, mailbox: str | None = None) -> int: ...

    def commit(
        self,
        mailbox: str,
        folder: str,
        *,
        sync_state: str | None,
        successes: Sequence[LedgerEntry] = (),
        pending: Sequence[PendingEntry] = (),
        resolved: Sequence[str] = (),
        dead: Sequence[DeadLetter] = (),
        relocated: Sequence[tuple[str, str]] = (),
    ) -> None:
        """Record one page's outcome in ONE transaction.

        Adds ``successes`` to the ledger, upserts ``pending`` (keyed by mailbox + item id), deletes
        the pending entries whose item ids are in ``resolved``, adds ``dead`` letters, gives the
        dead letters named by ``relocated`` (old item id, new item id) the id
        their mail has after its move to the dead-letter folder, and, when ``sync_state`` is not
        None, moves the folder's sync state to it.
        """
        ...

    def dead_letters(self, mailbox: str | None = None) -> list[DeadLetter]: ...

    def dead_letter(self, letter_id: int) -> DeadLetter | None: ...

    def remove_dead_letters(self, ids: Sequence[int]) -> int: ...

    def close(self) -> None: ...
