"""The same mail read through EWS and through Graph converts to the same Message (issue 13):
above all the idempotency key and the fingerprint, so a mailbox switched from EWS to Graph hands
nothing over twice."""

from __future__ import annotations

from typing import Any

import pytest
from exchangelib import Account

from ews_listener_emulators.server import EwsEmulator
from listener.model import Message, message_fingerprint
from listener.sources.ews._convert import FETCH_FIELDS, to_message
from listener.sources.graph.source import GraphMailSource
from tests.graph_emulator.conftest import ALICE
from tests.graph_source.mail import plain, rich

# Named by each protocol in its own way, or only by one of them.
_PROTOCOL_OWN = {"item_id", "source", "item_class", "conversation_id"}


def _comparable(message: Message) -> dict[str, Any]:
    data = message.to_dict()
    for name in _PROTOCOL_OWN:
        data.pop(name)
    data["attachments"] = sorted(
        ({k: v for k, v in a.items() if k != "attachment_id"} for a in data["attachments"]),
        key=lambda a: a["name"],
    )
    return data


@pytest.mark.parametrize("mail", [plain, rich], ids=["plain", "rich"])
def test_same_message_through_ews_and_graph(
    ews: EwsEmulator, account: Account, source: GraphMailSource, mail: Any
) -> None:
    """Field by field, EWS's to_message and Graph's agree on one delivered mail (only ids, the
    source, EWS's item class and the conversation id's form differ)."""
    ews.deliver(ALICE, mail("same mail"))
    [item] = list(
        account.fetch(
            ids=list(account.inbox.all().only("id", "changekey")), only_fields=FETCH_FIELDS
        )
    )
    through_ews = to_message(item, mailbox=ALICE, folder="inbox")
    page = source.changes(None, 10)
    [through_graph] = source.fetch(page.created)
    assert isinstance(through_graph, Message)
    assert through_graph.internet_message_id == through_ews.internet_message_id
    assert through_graph.idempotency_key == through_ews.idempotency_key
    assert message_fingerprint(through_graph) == message_fingerprint(through_ews)
    assert _comparable(through_graph) == _comparable(through_ews)
    assert through_graph.source == "graph"
    assert through_graph.item_class is None
