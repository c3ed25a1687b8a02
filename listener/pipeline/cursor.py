"""Where a poll starts: the stored sync state, read back, or the one ``start_from`` asks for.

Stored sync states carry the kind of the source that issued them (``graph:https://…``), so a
mailbox that moved from EWS to Microsoft Graph, or back, is noticed: the other protocol's state
cannot be read, and the folder is synced from its start, the ledger skipping what the other
protocol handed over (the keys do not depend on the protocol). That is the migration path of
README "Moving off EWS". The same sync from the start follows a state the server has lost.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from listener.abc import MailSource, PendingEntry, StateStore
from listener.pipeline.settings import PollerSettings

__all__ = ["parse_stored", "resync_floor", "starting_state", "stored"]

log = structlog.get_logger("listener.poller")

# A state written before issue 13 has no prefix and is EWS's (base64, which has no colon).
_LEGACY_KIND = "ews"


def stored(kind: str, state: str) -> str:
    """The stored form of the sync state ``state`` a source of ``kind`` issued."""
    return f"{kind}:{state}"


def parse_stored(value: str) -> tuple[str, str]:
    """(kind, the source's own state) of a stored sync state."""
    kind, sep, state = value.partition(":")
    if sep and kind.isidentifier() and not state.startswith("//"):
        return kind, state
    return _LEGACY_KIND, value


def _since_key(settings: PollerSettings) -> str:
    return f"{settings.folder}#watched-since"


def resync_floor(settings: PollerSettings, store: StateStore, error: str) -> datetime | None:
    """The server lost our sync state, or it is another protocol's: sync again from the start
    of the folder; the floor below which mail is not handed over then.

    The ledger skips what was handed over already. With ``start_from`` "new" or "unread",
    mail received before the mailbox was first watched is not handed over now either (the
    time of that first sync is kept next to the sync state).
    """
    since = store.get_sync_state(settings.name, _since_key(settings))
    # Five minutes of slack for the clock difference between us and the server: better a
    # few messages from just before the first sync than one lost.
    floor = datetime.fromisoformat(since) - timedelta(minutes=5) if since else None
    log.error(
        "sync_state.invalid",
        error=error,
        action="syncing the folder again from its start; the ledger skips what is done",
        floor=since,
    )
    return floor


def starting_state(
    settings: PollerSettings,
    source: MailSource,
    store: StateStore,
    clock: Callable[[], datetime],
) -> tuple[str | None, datetime | None]:
    """The stored sync state, or on the very first poll the one ``start_from`` asks for; with
    the floor below which mail is not handed over (only when syncing again from the start)."""
    name, folder = settings.name, settings.folder
    value = store.get_sync_state(name, folder)
    if value is not None:
        kind, state = parse_stored(value)
        if kind == source.kind:
            return state, None
        log.warning(
            "mailbox.source_switched",
            previous=kind,
            now=source.kind,
            action="syncing the folder from its start; the ledger skips what is done",
        )
        return None, resync_floor(settings, store, f"the stored sync state is {kind}'s")
    if settings.start_from == "all":
        return None, None
    # "new" and "unread": begin at the folder's present end; "unread" parks what is unread
    # now in the pending queue (due at once), in the same commit as the starting state.
    now = clock()
    # Kept for a resync after an invalid sync state (see resync_floor).
    store.commit(name, _since_key(settings), sync_state=now.isoformat())
    unread = source.unread() if settings.start_from == "unread" else ()
    end = source.current_state()
    parked = [
        PendingEntry(
            mailbox=name,
            item_id=r.item_id,
            idempotency_key="",
            handlers=(),
            attempts=0,
            next_attempt_at=now,
            last_error="",
            first_seen_at=now,
            source=source.kind,
        )
        for r in unread
    ]
    store.commit(name, folder, sync_state=stored(source.kind, end), pending=parked)
    log.info("mailbox.first_sync", start_from=settings.start_from, parked=len(parked))
    return end, None
