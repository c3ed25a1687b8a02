"""A Graph emulator without an EWS emulator beside it: a store and a scope table of its own, and
no schema validation when no OpenAPI folder is named."""

from __future__ import annotations

import httpx
import pytest

from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.server import EwsEmulator
from tests.graph_emulator.conftest import ALICE, SCOPED_ID, TokenFactory, World


def test_own_store_and_scopes(
    ews: EwsEmulator,
    world: World,
    http: httpx.Client,
    token: TokenFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its own store serves its own mailboxes; allow() scopes it alone; validation is off."""
    monkeypatch.delenv("GRAPH_SCHEMA_DIR", raising=False)
    with GraphEmulator(world.token_server, world.ca) as graph:
        assert graph.store is not world.ews.store
        assert graph.schema is None
        graph.store.add_mailbox(ALICE, "Alice Example")
        graph.allow(SCOPED_ID, ["someone-else@contoso.com"])
        headers = {"Authorization": f"Bearer {token(SCOPED_ID)}"}
        inbox = f"{graph.url}/users/{ALICE}/mailFolders/inbox"
        assert http.get(inbox, headers=headers).status_code == 403
        assert ews.allowed(SCOPED_ID, ALICE)  # the EWS table (reset by the fixture) is untouched
        graph.reset()
        answer = http.get(inbox, headers=headers)
        assert answer.status_code == 200
        assert answer.json()["displayName"] == "Inbox"
        assert graph.request_log[-1].schema_valid is None
