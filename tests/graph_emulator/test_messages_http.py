"""The message and delta resources over real HTTPS (httpx, tokens from the token server) through
``GraphEmulator``, with mail delivered and changed through the EWS side of the same store; the
``graph`` fixture (conftest.py) fails a test whose answers break the OpenAPI description."""

from __future__ import annotations

import base64
import os
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from ews_listener_emulators.graph._ids import to_rest_id
from ews_listener_emulators.graph.messages import ROUTES
from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.server import EwsEmulator
from tests.graph_emulator.conftest import ALICE, READER_ID, Call
from tests.graph_emulator.direct import schema_available

USER = f"users/{ALICE}"
BIG = os.urandom(10 * 1024 * 1024)  # issue 12's 10 MB attachment


@pytest.fixture(autouse=True)
def message_routes(graph: GraphEmulator) -> None:
    """The message routes on the server (a no-op once server.py lists them itself)."""
    graph.routes.extend(route for route in ROUTES if route not in graph.routes)


def mime(subject: str = "Over HTTPS", attachment: bytes | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = "Dana Swope <dana@example.com>"
    message["To"] = ALICE
    message["Subject"] = subject
    message["Message-ID"] = f"<{subject.replace(' ', '.')}@example.com>"
    message.set_content("Plain words.")
    message.add_alternative("<p>Plain <i>words</i>.</p>", subtype="html")
    if attachment is not None:
        message.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename="big.bin"
        )
    return message.as_bytes(policy=SMTP)


def test_one_message_through_ews_and_graph(
    graph: GraphEmulator, ews: EwsEmulator, call: Call
) -> None:
    """Mail delivered on the EWS side is read, marked and moved over Graph, and EWS sees it."""
    raw = mime()
    rest = to_rest_id(ews.deliver(ALICE, raw))
    got = call("GET", f"{USER}/messages/{rest}")
    assert got.status_code == 200
    assert got.json()["subject"] == "Over HTTPS"
    assert got.json()["body"]["contentType"] == "html"
    text = call(
        "GET", f"{USER}/messages/{rest}", headers={"Prefer": 'outlook.body-content-type="text"'}
    )
    assert text.headers["Preference-Applied"] == 'outlook.body-content-type="text"'
    assert text.json()["body"]["contentType"] == "text"
    value = call("GET", f"{USER}/messages/{rest}/$value")
    assert value.headers["content-type"].startswith("text/plain")
    assert value.content == raw
    patched = call("PATCH", f"{USER}/messages/{rest}", json={"isRead": True})
    assert patched.status_code == 200
    assert [v.is_read for v in ews.items(ALICE)] == [True]
    moved = call(
        "POST",
        f"{USER}/mailFolders('inbox')/messages/{rest}/move",
        json={"destinationId": "archive"},
    )
    assert moved.status_code == 201
    assert moved.json()["id"] != rest
    assert [v.item_id for v in ews.items(ALICE, "Archive")] == [
        moved.json()["id"].replace("-", "+").replace("_", "/")
    ]
    assert call("DELETE", f"{USER}/messages/{moved.json()['id']}").status_code == 204
    assert [v.subject for v in ews.items(ALICE, "deleteditems")] == ["Over HTTPS"]
    json_answers = [
        r for r in graph.request_log if r.operation in ("user_GetMessage", "user.message_move")
    ]
    assert json_answers
    assert all(r.schema_valid for r in json_answers) == schema_available()


def test_immutable_id_survives_a_move(ews: EwsEmulator, call: Call) -> None:
    """With Prefer: IdType="ImmutableId" the id a client holds names the message after a move."""
    ews.deliver(ALICE, mime())
    prefer = {"Prefer": 'IdType="ImmutableId"'}
    [listed] = call("GET", f"{USER}/mailFolders/inbox/messages", headers=prefer).json()["value"]
    moved = call(
        "POST",
        f"{USER}/messages/{listed['id']}/move",
        json={"destinationId": "drafts"},
        headers=prefer,
    )
    assert moved.json()["id"] == listed["id"]
    assert (
        call(
            "GET", f"{USER}/mailFolders/drafts/messages/{listed['id']}", headers=prefer
        ).status_code
        == 200
    )


def test_errors_in_odata_shape(ews: EwsEmulator, call: Call) -> None:
    """Unknown, malformed and forbidden come back as ODataError with Graph's codes."""
    rest = to_rest_id(ews.deliver(ALICE, mime()))
    malformed = call("GET", f"{USER}/messages/xyz")
    assert (malformed.status_code, malformed.json()["error"]["code"]) == (
        400,
        "ErrorInvalidIdMalformed",
    )
    denied = call("PATCH", f"{USER}/messages/{rest}", json={"isRead": True}, client_id=READER_ID)
    assert (denied.status_code, denied.json()["error"]["code"]) == (403, "ErrorAccessDenied")
    assert call("GET", f"{USER}/messages/{rest}", client_id=READER_ID).status_code == 200
    ews.move_item(ALICE, rest.replace("-", "+").replace("_", "/"), "drafts")
    gone = call("GET", f"{USER}/messages/{rest}")
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "ErrorItemNotFound")
    assert "request-id" in gone.json()["error"]["innerError"]


def test_a_10_mb_attachment(ews: EwsEmulator, call: Call) -> None:
    """A 10 MB file attachment comes whole as contentBytes and as $value."""
    rest = to_rest_id(ews.deliver(ALICE, mime(attachment=BIG)))
    [attachment] = call("GET", f"{USER}/messages/{rest}/attachments").json()["value"]
    assert attachment["size"] == len(BIG)
    assert base64.b64decode(attachment["contentBytes"]) == BIG
    raw = call("GET", f"{USER}/messages/{rest}/attachments/{attachment['id']}/$value")
    assert raw.content == BIG


def test_delta_round_trip_over_https(ews: EwsEmulator, call: Call) -> None:
    """Delta pages followed as URLs, a change made through EWS in the next round, a dead token
    refused with 410 and a Location to start over."""
    for n in range(3):
        ews.deliver(ALICE, mime(f"message {n}"))
    prefer = {"Prefer": "odata.maxpagesize=2"}
    page = call(
        "GET",
        f"{USER}/mailFolders/inbox/messages/delta",
        params={"$select": "subject,isRead"},
        headers=prefer,
    )
    assert page.headers["Preference-Applied"] == "odata.maxpagesize=2"
    seen = []
    while True:
        assert page.status_code == 200
        seen += [m["subject"] for m in page.json()["value"]]
        if "@odata.deltaLink" in page.json():
            break
        page = call("GET", page.json()["@odata.nextLink"], headers=prefer)
    assert seen == ["message 0", "message 1", "message 2"]
    delta_link = page.json()["@odata.deltaLink"]
    first = ews.items(ALICE)[0]
    ews.set_read(ALICE, first.item_id)
    [changed] = call("GET", delta_link).json()["value"]
    assert (changed["id"], changed["isRead"], set(changed)) == (
        to_rest_id(first.item_id),
        True,
        {"@odata.type", "@odata.etag", "id", "subject", "isRead"},
    )
    dead = call(
        "GET", f"{USER}/mailFolders/inbox/messages/delta", params={"$deltatoken": "expired"}
    )
    assert (dead.status_code, dead.json()["error"]["code"]) == (410, "syncStateNotFound")
    restart = call("GET", dead.headers["Location"])
    assert restart.status_code == 200
    assert len(restart.json()["value"]) == 3


def test_filter_by_internet_message_id_and_expand_with_select(ews: EwsEmulator, call: Call) -> None:
    """``$filter=internetMessageId eq '…'`` matches the Message-ID as sent (what a client uses
    to find mail again), and ``$expand=attachments($select=…)`` leaves the content out."""
    ews.deliver(ALICE, mime("findable", attachment=b"payload"))
    ews.deliver(ALICE, mime("other"))
    [wanted] = [
        m
        for m in call("GET", f"users/{ALICE}/messages?$select=internetMessageId,subject").json()[
            "value"
        ]
        if m["subject"] == "findable"
    ]
    mid = wanted["internetMessageId"].replace("'", "''")
    found = call(
        "GET",
        f"users/{ALICE}/mailFolders/inbox/messages",
        params={"$filter": f"internetMessageId eq '{mid}'", "$select": "id,subject"},
    )
    assert found.status_code == 200
    assert [m["subject"] for m in found.json()["value"]] == ["findable"]
    one = call(
        "GET",
        f"users/{ALICE}/messages/{wanted['id']}",
        params={"$select": "subject", "$expand": "attachments($select=id,name,size,isInline)"},
    )
    assert one.status_code == 200
    [attachment] = one.json()["attachments"]
    assert "contentBytes" not in attachment
    assert attachment["name"]
    bad = call(
        "GET",
        f"users/{ALICE}/messages/{wanted['id']}",
        params={"$expand": "attachments($select=x)"},
    )
    assert bad.status_code == 400
