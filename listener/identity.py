"""Which key each fetched message is handed over under, and what the ledger already has of it.

The key is the message's own (``listener.model.idempotency_key``: mailbox address and Message-ID).
The ledger remembers a fingerprint of each message handed over (sender, sent time, subject), which
settles the two cases the key alone cannot:

* a **different message that reuses a Message-ID** (broken mailers do): its key is taken by a
  message with another fingerprint, in the ledger or earlier in the same batch, so it gets a key
  of its own (``listener.model.disambiguated_key``) and is handed over, not skipped;
* a message **without a Message-ID** handed over before store schema 3, under the key of that time
  (mailbox + item id; ``listener.model.legacy_idempotency_key``): that entry counts as its own.
  (Entries with a Message-ID were re-keyed at start-up: ``StateStore.adopt_legacy_keys``.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import structlog

from listener.abc import FetchFailure
from listener.model import (
    Message,
    disambiguated_key,
    legacy_idempotency_key,
    message_fingerprint,
)

__all__ = ["HandedOver", "identify"]

log = structlog.get_logger("listener.poller")

# keys → the ledger's (key, handler) pairs among them, with the fingerprint of each
HandedOver = Callable[[Sequence[str]], Mapping[tuple[str, str], str | None]]


def identify(
    fetched: Sequence[Message | FetchFailure], handed_over: HandedOver
) -> tuple[list[Message | FetchFailure], dict[tuple[str, str], str]]:
    """The fetched items, each message under the key it is handed over under, and the ledger's
    (key, handler) pairs for them (→ the fingerprint they were handed over with, or "").

    ``handed_over`` is ``StateStore.handed_over``, or the poller's view of it that adds what this
    poll handed over and has not committed yet (a batch of a poll is identified before the one
    before it is committed: ``listener.pipeline.settler``)."""
    messages = [m for m in fetched if isinstance(m, Message)]
    if not messages:
        return list(fetched), {}
    legacy = {
        legacy_idempotency_key(m.mailbox, m.item_id, None): m.idempotency_key
        for m in messages
        if not m.internet_message_id
    }
    found = handed_over([*(m.idempotency_key for m in messages), *legacy])
    known: dict[str, str] = {}  # key → fingerprint of the message handed over under it
    done: dict[tuple[str, str], str] = {}
    for (found_key, handler), print_ in found.items():
        key = legacy.get(found_key, found_key)
        done[(key, handler)] = print_ or ""
        if print_:
            known.setdefault(key, print_)
    out: list[Message | FetchFailure] = []
    seen: dict[str, str] = {}  # key → fingerprint of the message this batch gave it to
    rekeyed: list[str] = []
    for item in fetched:
        if not isinstance(item, Message):
            out.append(item)
            continue
        key, print_ = item.idempotency_key, message_fingerprint(item)
        owner = known.get(key) or seen.get(key)
        if owner is not None and owner != print_:
            key = disambiguated_key(key, print_)
            log.warning(
                "message.shared_message_id",
                internet_message_id=item.internet_message_id,
                key=key,
                action="a different message already has this Message-ID: it gets a key of its own",
            )
            rekeyed.append(key)
            item = item.model_copy(update={"idempotency_key": key})  # noqa: PLW2901
        seen.setdefault(key, print_)
        out.append(item)
    if rekeyed:
        done.update({k: p or "" for k, p in handed_over(rekeyed).items()})
    return out, done
