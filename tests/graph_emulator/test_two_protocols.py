"""One mail store, two protocols: mail delivered once is seen through EWS (exchangelib, as the
listener reads it) and through Graph (folder counts), and changes made through one show in the
other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests.adapters
from exchangelib import IMPERSONATION, OAUTH2, Account, Configuration, Identity, Version
from exchangelib.protocol import BaseProtocol
from exchangelib.version import EXCHANGE_2016

from ews_listener_emulators.server import EwsEmulator
from tests.emulator.conftest import TokenCredentials, simple_mime
from tests.graph_emulator.conftest import ALICE, CLIENT_ID, EWS_SCOPE, Call, TokenFactory, World


@pytest.fixture
def account(ews: EwsEmulator, world: World, token: TokenFactory) -> Iterator[Account]:
    """An exchangelib account for Alice, trusting the emulator CA, with an EWS token."""
    ca_file = str(world.ca.ca_file)

    class EmulatorAdapter(requests.adapters.HTTPAdapter):
        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            super().cert_verify(conn=conn, url=url, verify=ca_file, cert=cert)

    previous = BaseProtocol.HTTP_ADAPTER_CLS
    BaseProtocol.HTTP_ADAPTER_CLS = EmulatorAdapter
    credentials = TokenCredentials(
        lambda: token(CLIENT_ID, EWS_SCOPE), Identity(primary_smtp_address=ALICE)
    )
    config = Configuration(
        service_endpoint=ews.url,
        credentials=credentials,
        auth_type=OAUTH2,
        version=Version(build=EXCHANGE_2016),
        max_connections=2,
    )
    account = Account(ALICE, access_type=IMPERSONATION, config=config, autodiscover=False)
    yield account
    account.protocol.close()
    BaseProtocol.HTTP_ADAPTER_CLS = previous


def counts(call: Call, folder: str) -> tuple[int, int]:
    body = call("GET", f"users/{ALICE}/mailFolders/{folder}").json()
    return body["totalItemCount"], body["unreadItemCount"]


def test_delivered_once_seen_through_both(ews: EwsEmulator, account: Account, call: Call) -> None:
    """deliver() once: exchangelib reads the message, Graph counts it in the inbox; marking it
    read and moving it with EWS changes the counts Graph shows."""
    assert counts(call, "inbox") == (0, 0)
    ews.deliver(ALICE, simple_mime("quarterly report"))
    [item] = list(account.inbox.all())
    assert item.subject == "quarterly report"
    assert item.is_read is False
    assert counts(call, "inbox") == (1, 1)

    item.is_read = True
    item.save(update_fields=["is_read"])
    assert counts(call, "inbox") == (1, 0)

    created = call(
        "POST", f"users/{ALICE}/mailFolders/inbox/childFolders", json={"displayName": "Done"}
    ).json()
    [done] = [f for f in account.inbox.children if f.name == "Done"]  # made through Graph
    item.move(done)
    assert counts(call, "inbox") == (0, 0)
    assert counts(call, created["id"]) == (1, 0)
