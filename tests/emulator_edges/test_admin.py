"""The admin API over real HTTP: mailboxes, delivery, items, faults, request log, tokens."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from urllib.parse import quote

import httpx
import pytest
from exchangelib.protocol import FailFast

from ews_listener_emulators.admin import AdminServer
from ews_listener_emulators.feed import SampleFactory
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer

from .conftest import MAILBOX, AccountFactory


@pytest.fixture
def admin(emulator: EwsEmulator, token_server: TokenServer) -> Iterator[httpx.Client]:
    """An httpx client on a running admin API (base URL ``…/admin``)."""
    with AdminServer(emulator, token_server) as server, httpx.Client(base_url=server.url) as c:
        yield c


def test_health_and_unknown_routes(admin: httpx.Client, emulator: EwsEmulator) -> None:
    """/health answers with the EWS URL; unknown paths 404, wrong methods 405."""
    assert admin.get("/health").json() == {"ok": True, "ews": emulator.url}
    assert admin.get("/nothing").status_code == 404
    assert admin.delete("/mailboxes").status_code == 405


def test_mailboxes_folders_and_field_delivery(admin: httpx.Client, emulator: EwsEmulator) -> None:
    """Create a mailbox and a folder, deliver from fields, list and inspect the item."""
    assert admin.post("/mailboxes", json={"address": "new@edges.example"}).status_code == 201
    assert "new@edges.example" in [m["address"] for m in admin.get("/mailboxes").json()]
    folder = admin.post("/mailboxes/new@edges.example/folders", json={"path": "inbox/Orders"})
    assert folder.status_code == 201
    answer = admin.post(
        "/mailboxes/new@edges.example/messages",
        json={
            "folder": "inbox/Orders",
            "from": "Zoë <zoe@patisserie.example>",
            "subject": "Crème brûlée für Zoë",
            "text": "hello",
            "html": "<p>hello</p>",
            "attachments": [
                {"filename": "a.txt", "content_type": "text/plain", "content_base64": "aGk="}
            ],
            "is_read": True,
        },
    )
    assert answer.status_code == 201, answer.text
    item_id = answer.json()["item_id"]
    listed = admin.get("/mailboxes/new@edges.example/items", params={"folder": "inbox/Orders"})
    assert [i["item_id"] for i in listed.json()] == [item_id]
    # Ids are base64 and may hold '/': they go into the path URL-encoded.
    item = admin.get(f"/mailboxes/new@edges.example/items/{quote(item_id, safe='')}").json()
    assert item["subject"] == "Crème brûlée für Zoë"
    assert item["is_read"] is True
    assert item["folder"].endswith("Orders")


def test_deliver_raw_mime_and_read_it_with_exchangelib(
    admin: httpx.Client, account: AccountFactory
) -> None:
    """A base64 MIME delivery is readable through EWS with its subject intact."""
    raw = SampleFactory(9).message(MAILBOX, "invoice_pdf")
    answer = admin.post(
        f"/mailboxes/{MAILBOX}/messages", json={"mime_base64": base64.b64encode(raw).decode()}
    )
    item_id = answer.json()["item_id"]
    item = account(FailFast()).inbox.get(id=item_id)
    assert item.subject.startswith(("Invoice", "Rechnung"))
    assert any(a.name.endswith(".pdf") for a in item.attachments)


def test_bad_requests_are_explained(admin: httpx.Client) -> None:
    """Bad input answers 400/404 with an error text naming the problem."""
    bad_json = admin.post("/mailboxes", content=b"{nope")
    assert bad_json.status_code == 400
    assert "not JSON" in bad_json.json()["error"]
    assert admin.post("/mailboxes", json={"address": "nope"}).status_code == 400
    missing = admin.get("/mailboxes/ghost@edges.example/items")
    assert missing.status_code == 404
    assert "ghost@edges.example" in missing.json()["error"]
    bad_b64 = admin.post(f"/mailboxes/{MAILBOX}/messages", json={"mime_base64": "%%%"})
    assert bad_b64.status_code == 400
    assert admin.post("/faults", json={"kind": "meteor"}).status_code == 400


def test_fault_rules_counters_and_request_log(admin: httpx.Client, account: AccountFactory) -> None:
    """Add a rule over HTTP, see it fire through exchangelib, read counters and the log."""
    rule = admin.post(
        "/faults", json={"kind": "server_busy", "operation": "GetFolder", "back_off_ms": 10}
    ).json()
    assert rule["kind"] == "server_busy"
    assert admin.get("/faults").json()[0]["rule_id"] == rule["rule_id"]
    with pytest.raises(Exception, match="cannot service"):
        _ = account(FailFast()).inbox
    assert admin.get("/faults/counters").json() == {"server_busy": 1}
    assert admin.get("/faults").json() == []  # a count-1 rule is spent
    kept = admin.post("/faults", json={"kind": "http_500", "probability": 0.5}).json()
    assert admin.delete(f"/faults/{kept['rule_id']}").status_code == 200
    assert admin.delete("/faults/r999").status_code == 404
    assert admin.put("/faults/connection-limit", json={"limit": 5}).json() == {"limit": 5}
    log = admin.get("/requests", params={"limit": 10}).json()
    assert any(r["error_code"] == "ErrorServerBusy" for r in log)


def test_token_control(
    admin: httpx.Client, token_server: TokenServer, account: AccountFactory
) -> None:
    """down/up/fail-next/revoke reach the token server; expire makes EWS answer 401."""
    assert admin.post("/token/down").status_code == 200
    assert not token_server.running
    assert admin.post("/token/up").status_code == 200
    assert token_server.running
    assert admin.post("/token/fail-next", json={"count": 2, "status": 500}).json() == {
        "count": 2,
        "status": 500,
    }
    revoked_account = account(FailFast())
    assert admin.post("/token/revoke", json={}).json() == {"revoked": "*"}
    with pytest.raises(Exception, match="Invalid credentials"):
        _ = revoked_account.inbox
    assert admin.post("/token/expire", json={"count": 1}).status_code == 201
    with pytest.raises(Exception, match="Invalid credentials"):
        _ = account(FailFast()).inbox


def test_reset_forgets_everything(admin: httpx.Client, emulator: EwsEmulator) -> None:
    """POST /reset clears mailboxes, rules and counters."""
    admin.post("/faults", json={"kind": "latency", "count": 3})
    assert admin.post("/reset").json() == {"reset": True}
    assert admin.get("/mailboxes").json() == []
    assert admin.get("/faults").json() == []
    assert emulator.faults.counters() == {}


def test_scope_app(admin: httpx.Client, emulator: EwsEmulator) -> None:
    """POST /apps scopes an app to some mailboxes (RBAC for Applications)."""
    answer = admin.post("/apps", json={"client_id": "app-x", "mailboxes": [MAILBOX]})
    assert answer.status_code == 200
    assert emulator.allowed("app-x", MAILBOX)
    assert not emulator.allowed("app-x", "support@edges.example")
