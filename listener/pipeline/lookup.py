"""Finding a message again whose recorded id this source cannot serve: a pending entry or a dead
letter another kind of source recorded before the mailbox switched protocol, or mail moved to
the dead-letter folder after its letter was recorded (by its Message-ID, where it went or in the
watched folder)."""

from __future__ import annotations

from collections.abc import Sequence

import structlog

from listener.abc import DeadLetter, FetchFailure, ItemRef, MailSource, PendingEntry, StateStore
from listener.model import Message

__all__ = ["due_refs", "fetch_letters"]

log = structlog.get_logger("listener.poller")


def due_refs(
    due: Sequence[PendingEntry], source: MailSource, store: StateStore, folder: str
) -> tuple[list[ItemRef], dict[str, PendingEntry], list[FetchFailure], list[str]]:
    """The refs to fetch for ``due`` entries, the entry behind each fetched id, and the
    failures of entries whose mail cannot be found, and the entries found to be done.

    An entry another kind of source parked (the mailbox switched protocol since) names its
    mail by an id this source cannot read: it is found again by its Message-ID in the watched
    ``folder``. Mail no longer there was either handed over by the sync from the start that the
    switch caused (the ledger says so: the entry is done) or left the folder (a dead letter
    that says so, replayable by Message-ID).
    """
    refs: list[ItemRef] = []
    entries: dict[str, PendingEntry] = {}
    lost: list[FetchFailure] = []
    finished: list[str] = []
    for entry in due:
        if entry.source == source.kind:
            refs.append(ItemRef(entry.item_id))
            entries[entry.item_id] = entry
            continue
        found = None
        if entry.internet_message_id:
            found = source.find(folder, entry.internet_message_id)
        if found is not None:
            refs.append(found)
            entries[found.item_id] = entry
            continue
        key = entry.idempotency_key
        done = {handler for _, handler in store.done([key])} if key else set()
        if entry.handlers and set(entry.handlers) <= done:
            finished.append(entry.item_id)
            continue
        entries[entry.item_id] = entry
        why = (
            f"parked by the {entry.source} source before the mailbox switched to "
            f"{source.kind}; not found again in {folder!r}"
        )
        lost.append(FetchFailure(ItemRef(entry.item_id), why, gone=True))
    return refs, entries, lost, finished


def fetch_letters(
    letters: Sequence[DeadLetter], source: MailSource, folder: str
) -> tuple[list[ItemRef], list[Message | FetchFailure]]:
    """Fetch the mail of ``letters``, found by Message-ID where its id cannot serve.

    That is mail moved to the dead-letter folder after its letter was recorded but before its
    new id was (looked up in ``moved_to``), and mail of a letter another kind of source
    recorded before the mailbox switched protocol (looked up where it went, else in the
    watched ``folder``).
    """
    kind = source.kind
    refs = [ItemRef(d.item_id) for d in letters]
    native = [i for i, d in enumerate(letters) if d.source == kind]
    fetched: list[Message | FetchFailure] = [
        FetchFailure(
            refs[i],
            f"recorded by the {d.source} source before the mailbox switched to {kind}, "
            "without a Message-ID to find the mail by",
            gone=True,
        )
        for i, d in enumerate(letters)
    ]
    for i, item in zip(native, source.fetch([refs[i] for i in native]), strict=True):
        fetched[i] = item
    for i, (letter, item) in enumerate(zip(letters, fetched, strict=True)):
        if not (isinstance(item, FetchFailure) and item.gone and letter.internet_message_id):
            continue
        folders = [letter.moved_to] if letter.moved_to else []
        if letter.source != kind:
            folders.append(folder)
        for where in folders:
            found = source.find(where, letter.internet_message_id)
            if found is not None:
                log.info("dead_letter.found_by_message_id", folder=where)
                refs[i] = found
                fetched[i] = source.fetch([found])[0]
                break
    return refs, fetched
