"""IsDraft as Exchange derives it, and arrival order among mail received in the same second."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from exchangelib import Message

from ews_listener_emulators.server import EwsEmulator
from tests.emulator.conftest import ALICE, BOB, AccountFactory, simple_mime

SECOND = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


def test_item_saved_into_drafts_is_a_draft(emu: EwsEmulator, make_account: AccountFactory) -> None:
    """A message saved (never sent) is IsDraft; delivered mail and the sent copy are not."""
    account = make_account()
    draft = Message(account=account, folder=account.drafts, subject="unsent", to_recipients=[BOB])
    draft.save()
    sent = Message(account=account, folder=account.sent, subject="sent", to_recipients=[BOB])
    sent.send_and_save()
    emu.deliver(ALICE, simple_mime("delivered"))
    assert [m.is_draft for m in account.drafts.all().only("is_draft")] == [True]
    assert [m.is_draft for m in account.sent.all().only("is_draft")] == [False]
    assert [m.is_draft for m in account.inbox.all().only("is_draft")] == [False]
    bob = make_account(BOB)
    assert [m.is_draft for m in bob.inbox.all().only("is_draft")] == [False]


@pytest.mark.parametrize("same_instant", [False, True], ids=["same-second", "same-instant"])
def test_mail_received_in_one_second_sorts_by_arrival(
    emu: EwsEmulator, make_account: AccountFactory, same_instant: bool
) -> None:
    """Three messages in one second: newest-first and oldest-first follow arrival, both ways."""
    for n in range(3):
        at = SECOND if same_instant else SECOND.replace(microsecond=100_000 * (n + 1))
        emu.deliver(ALICE, simple_mime(f"arrival {n}"), received_at=at)
    inbox = make_account().inbox
    newest = [m.subject for m in inbox.all().order_by("-datetime_received").only("subject")]
    oldest = [m.subject for m in inbox.all().order_by("datetime_received").only("subject")]
    default = [m.subject for m in inbox.all().only("subject")]
    assert newest == ["arrival 2", "arrival 1", "arrival 0"]
    assert oldest == ["arrival 0", "arrival 1", "arrival 2"]
    assert default == newest
