"""``FencedStore``: one mailbox's view of the state store whose every commit carries a fence."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from listener.abc import DeadLetter, LedgerEntry, PendingEntry
from listener.store import Fence, LeaseLost, SqlStateStore

__all__ = ["FencedStore"]


class FencedStore:
    """``StateStore`` for the poller of ``mailbox``: reads go straight through; ``commit`` is
    accepted only under ``fence``, the lease the current poll started under (set by the daemon
    at the start of each poll: a poll that outlives its lease keeps the old epoch, and the
    database refuses its commits with ``LeaseLost``)."""

    def __init__(self, store: SqlStateStore, mailbox: str) -> None:
        self._store = store
        self.mailbox = mailbox
        self.fence: Fence | None = None
        # folder -> (the fence it was read or committed under, the stored sync state)
        self._states: dict[str, tuple[Fence, str | None]] = {}

    def __repr__(self) -> str:
        return f"FencedStore({self._store!r}, {self.mailbox!r}, {self.fence!r})"

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
        fence = self.fence
        if fence is None or fence.mailbox != mailbox:
            raise LeaseLost(mailbox, "no poll of it runs under a lease here")
        try:
            self._store.commit(
                mailbox,
                folder,
                sync_state=sync_state,
                successes=successes,
                pending=pending,
                resolved=resolved,
                dead=dead,
                relocated=relocated,
                fence=fence,
            )
        except BaseException:
            self._states.pop(folder, None)  # refused, or unknown whether it was written
            raise
        if sync_state is not None:
            self._states[folder] = (fence, sync_state)

    def get_sync_state(self, mailbox: str, folder: str) -> str | None:
        """The stored sync state; read once per lease epoch, then known.

        Under one epoch of this replica's lease nobody else commits this mailbox's state: every
        commit passes ``check_fence``, and another replica can only commit after claiming the
        lease, which raises the epoch (a claim skips a lease row locked by a commit in flight).
        So a state read or committed under ``fence`` is still the stored one while polls run
        under that same fence: a poll need not read it again (one statement less per idle
        poll). A new epoch (the lease lost and claimed back) reads it again. The one other
        writer, ``ews-listener once`` run beside the daemon on the same state, could make the
        known state older than the stored one: a sync from it lists again mail the ledger
        already holds, which is skipped (and the same ``once`` can race a daemon today).
        """
        fence = self.fence
        known = self._states.get(folder)
        if mailbox == self.mailbox and known is not None and known[0] == fence:
            return known[1]
        value = self._store.get_sync_state(mailbox, folder)
        if mailbox == self.mailbox and fence is not None:
            self._states[folder] = (fence, value)
        return value

    # --- reads and the rest, unfenced -----------------------------------------------------------

    def done(self, keys: Sequence[str]) -> set[tuple[str, str]]:
        return self._store.done(keys)

    def handed_over(self, keys: Sequence[str]) -> dict[tuple[str, str], str | None]:
        return self._store.handed_over(keys)

    def adopt_legacy_keys(self, addresses: Mapping[str, str]) -> int:
        return self._store.adopt_legacy_keys(addresses)

    def dead_lettered(self, keys: Sequence[str]) -> set[str]:
        return self._store.dead_lettered(keys)

    def due_pending(self, mailbox: str, now: datetime, limit: int) -> list[PendingEntry]:
        return self._store.due_pending(mailbox, now, limit)

    def pending_count(self, mailbox: str | None = None) -> int:
        return self._store.pending_count(mailbox)

    def dead_letters(self, mailbox: str | None = None) -> list[DeadLetter]:
        return self._store.dead_letters(mailbox)

    def dead_letter(self, letter_id: int) -> DeadLetter | None:
        return self._store.dead_letter(letter_id)

    def remove_dead_letters(self, ids: Sequence[int]) -> int:
        return self._store.remove_dead_letters(ids)

    def close(self) -> None:
        """The shared store is closed by its owner (``App.close``)."""
