"""Graph message resources on the mail store (graph/messages.py, graph/_render.py), called
directly with real MIME delivered to a real ``MailStore``; every JSON answer is validated against
Microsoft's OpenAPI description (tests/graph_emulator/direct.py)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import SMTP

import pytest

from ews_listener_emulators.graph._ids import to_rest_id
from ews_listener_emulators.store import Item, MailStore
from tests.graph_emulator.direct import (
    ALICE,
    Client,
    deliver,
    sample,
    samples_available,
    schema_available,
)

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
PDF = b"%PDF-1.4 not really a pdf \x00\x01\x02" * 10
needs_samples = pytest.mark.skipif(not samples_available(), reason="../shared/graph-samples")


def mime(
    subject: str = "Quarterly figures",
    sender: str = "Dana Swope <dana@example.com>",
    *,
    html: bool = True,
    attach: bool = False,
    attach_message: bool = False,
    headers: dict[str, str] | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "Alice Example <alice@contoso.com>"
    message["Cc"] = "bob@contoso.com"
    message["Subject"] = subject
    message["Date"] = "Mon, 30 Nov 2026 08:59:58 +0000"
    message["Message-ID"] = f"<{abs(hash(subject))}@example.com>"
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content("The figures are attached.\r\nRegards, Dana")
    if html:
        message.add_alternative(
            "<html><body><p>The figures are <b>attached</b>.</p></body></html>", subtype="html"
        )
    if attach:
        message.add_attachment(PDF, maintype="application", subtype="pdf", filename="figures.pdf")
    if attach_message:
        inner = EmailMessage()
        inner["From"] = "Megan Bowen <megan@example.com>"
        inner["To"] = "dana@example.com"
        inner["Subject"] = "Let's go for lunch"
        inner["Date"] = "Thu, 26 Nov 2026 21:17:58 +0000"
        inner.set_content("Does mid month work for you?")
        message.add_attachment(inner)
    return message.as_bytes(policy=SMTP)


@pytest.fixture
def store() -> MailStore:
    store = MailStore()
    store.add_mailbox(ALICE, "Alice Example")
    return store


@pytest.fixture
def graph(store: MailStore) -> Client:
    mailbox = store.mailbox(ALICE)
    assert mailbox is not None
    return Client(store, mailbox)


def put(graph: Client, raw: bytes, folder: str = "inbox", **kwargs: object) -> Item:
    return deliver(graph.store, graph.mailbox, raw, folder, **kwargs)  # type: ignore[arg-type]


def rest(item: Item) -> str:
    return to_rest_id(item.item_id)


def test_schema_is_here_to_validate_against() -> None:
    """The OpenAPI description is available, so every answer below was validated."""
    assert schema_available(), "set GRAPH_SCHEMA_DIR or provide ../shared/graph-schema"


# --- rendering -------------------------------------------------------------------------------


@needs_samples
def test_get_has_the_documented_properties(graph: Client) -> None:
    """GET messages/{id} has exactly the properties of the docs' message-get example."""
    item = put(graph, mime())
    answer = graph.get(f"messages/{rest(item)}")
    assert answer.status == 200
    assert set(answer.json) == set(sample("message-get.http.txt"))
    body = answer.json
    assert body["id"] == rest(item)
    assert body["@odata.etag"] == f'W/"{item.change_key}"' == f'W/"{body["changeKey"]}"'
    assert body["@odata.context"].endswith(
        "/$metadata#users('alice%40contoso.com')/messages/$entity"
    )
    assert body["subject"] == "Quarterly figures"
    assert body["from"] == {"emailAddress": {"name": "Dana Swope", "address": "dana@example.com"}}
    assert body["sender"] == body["from"]
    assert body["toRecipients"] == [
        {"emailAddress": {"name": "Alice Example", "address": "alice@contoso.com"}}
    ]
    assert body["ccRecipients"] == [
        {"emailAddress": {"name": "bob@contoso.com", "address": "bob@contoso.com"}}
    ]
    assert body["body"]["contentType"] == "html"
    assert "<b>attached</b>" in body["body"]["content"]
    assert body["bodyPreview"] == "The figures are attached.\r\nRegards, Dana"
    assert body["importance"] == "normal"
    assert body["flag"] == {"flagStatus": "notFlagged"}
    assert body["sentDateTime"] == "2026-11-30T08:59:58Z"
    assert body["parentFolderId"] == to_rest_id(graph.mailbox.distinguished["inbox"].folder_id)
    assert body["isRead"] is False
    assert body["hasAttachments"] is False
    assert "internetMessageHeaders" not in body


def test_select_keeps_the_asked_properties_and_the_id(graph: Client) -> None:
    """$select answers the named properties (any case) plus id and @odata.etag."""
    item = put(graph, mime())
    answer = graph.get(f"messages/{rest(item)}", {"$select": "Subject,isRead"})
    assert set(answer.json) == {"@odata.context", "@odata.etag", "id", "subject", "isRead"}


@needs_samples
def test_internet_message_headers_only_when_selected(graph: Client) -> None:
    """internetMessageHeaders comes with $select only, as message-get-internetmessageheaders."""
    item = put(graph, mime(headers={"x-custom-header-group-name": "Washington"}))
    answer = graph.get(f"messages/{rest(item)}", {"$select": "internetMessageHeaders"})
    assert set(answer.json) == set(sample("message-get-internetmessageheaders.http.txt"))
    assert {"name": "x-custom-header-group-name", "value": "Washington"} in answer.json[
        "internetMessageHeaders"
    ]


@needs_samples
def test_prefer_text_body_is_applied(graph: Client) -> None:
    """Prefer: outlook.body-content-type="text" gives the text body and Preference-Applied, in
    the shape of message-get-body-text."""
    item = put(graph, mime())
    prefer = {"Prefer": 'outlook.body-content-type="text"'}
    select = {"$select": "subject,body,bodyPreview,uniqueBody"}
    answer = graph.get(f"messages/{rest(item)}", select, headers=prefer)
    assert answer.headers == {"Preference-Applied": 'outlook.body-content-type="text"'}
    assert set(answer.json) == set(sample("message-get-body-text.http.txt"))
    text = {"contentType": "text", "content": "The figures are attached.\r\nRegards, Dana\r\n"}
    assert answer.json["body"] == answer.json["uniqueBody"] == text


def test_an_html_only_message_has_a_text_rendering(graph: Client) -> None:
    """HTML-only mail asked for as text loses its markup; text-only mail asked as HTML gains it."""
    message = EmailMessage()
    message["From"] = "x@example.com"
    message["Subject"] = "html only"
    message.set_content(
        "<html><head><style>p{}</style></head><body><p>Hi &amp; bye</p></body></html>",
        subtype="html",
    )
    item = put(graph, message.as_bytes())
    text = graph.get(
        f"messages/{rest(item)}", headers={"Prefer": 'outlook.body-content-type="text"'}
    )
    assert text.json["body"] == {"contentType": "text", "content": "Hi & bye"}
    assert text.json["bodyPreview"] == "Hi & bye"
    plain = put(graph, mime(html=False))
    html = graph.get(
        f"messages/{rest(plain)}", headers={"Prefer": 'outlook.body-content-type="html"'}
    )
    assert html.json["body"]["contentType"] == "html"
    assert "Regards, Dana" in html.json["body"]["content"]


# --- lists -----------------------------------------------------------------------------------


def _many(graph: Client, count: int, folder: str = "inbox") -> list[Item]:
    return [
        put(graph, mime(f"message {n}"), folder, received_at=T0 + timedelta(minutes=n))
        for n in range(count)
    ]


def test_list_pages_by_ten_newest_first(graph: Client) -> None:
    """A list has 10 messages, newest first, and an @odata.nextLink with $skip."""
    _many(graph, 12)
    first = graph.get("mailFolders/inbox/messages")
    assert [m["subject"] for m in first.value] == [f"message {n}" for n in range(11, 1, -1)]
    assert first.json["@odata.nextLink"].endswith(
        "/users/alice%40contoso.com/mailFolders/inbox/messages?$skip=10"
    )
    second = graph.follow(first.json["@odata.nextLink"])
    assert [m["subject"] for m in second.value] == ["message 1", "message 0"]
    assert "@odata.nextLink" not in second.json


def test_list_top_skip_count_and_orderby(graph: Client) -> None:
    """$top, $skip, $count=true and $orderby asc work together; the link keeps the options."""
    _many(graph, 5)
    answer = graph.get(
        "messages",
        {
            "$top": "2",
            "$skip": "1",
            "$count": "true",
            "$orderby": "receivedDateTime asc",
            "$select": "subject",
        },
    )
    assert answer.json["@odata.count"] == 5
    assert [m["subject"] for m in answer.value] == ["message 1", "message 2"]
    link = answer.json["@odata.nextLink"]
    assert "%24top=2" not in link
    assert "$top=2" in link
    assert "$skip=3" in link
    assert [m["subject"] for m in graph.follow(link).value] == ["message 3", "message 4"]


def test_users_messages_spans_the_mail_folders(graph: Client) -> None:
    """users/{u}/messages lists the mail of every folder; a folder's list only its own."""
    put(graph, mime("in inbox"))
    put(graph, mime("in archive"), "inbox/Projects")
    assert {m["subject"] for m in graph.get("messages").value} == {"in inbox", "in archive"}
    assert [m["subject"] for m in graph.get("mailFolders/inbox/messages").value] == ["in inbox"]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("isRead eq false", {"message 0", "message 2"}),
        ("isRead eq true", {"message 1"}),
        ("receivedDateTime ge 2026-11-30T09:01:00Z", {"message 1", "message 2"}),
        ("receivedDateTime gt 2026-11-30T09:01:00Z", {"message 2"}),
        ("receivedDateTime lt 2026-11-30T09:01:00Z", {"message 0"}),
        ("receivedDateTime le 2026-11-30T09:01:00Z", {"message 0", "message 1"}),
        ("receivedDateTime eq 2026-11-30T09:02:00Z", {"message 2"}),
        ("from/emailAddress/address eq 'DANA@example.com'", {"message 0", "message 1"}),
        ("isRead eq false and from/emailAddress/address eq 'dana@example.com'", {"message 0"}),
    ],
)
def test_filter(graph: Client, expression: str, expected: set[str]) -> None:
    """$filter on isRead, receivedDateTime (ge gt le lt eq) and the sender's address."""
    put(graph, mime("message 0"), received_at=T0)
    put(graph, mime("message 1"), received_at=T0 + timedelta(minutes=1), is_read=True)
    put(graph, mime("message 2", "Ola <ola@example.org>"), received_at=T0 + timedelta(minutes=2))
    answer = graph.get("mailFolders/inbox/messages", {"$filter": expression})
    assert {m["subject"] for m in answer.value} == expected


def test_filter_with_orderby_must_lead_with_the_sorted_property(graph: Client) -> None:
    """$orderby with $filter: the sorted property first in the filter, else InefficientFilter."""
    _many(graph, 2)
    good = {
        "$filter": "receivedDateTime ge 2026-01-01T00:00:00Z and isRead eq false",
        "$orderby": "receivedDateTime desc",
    }
    assert graph.get("messages", good).status == 200
    bad = {"$filter": "isRead eq false", "$orderby": "receivedDateTime desc"}
    assert (graph.get("messages", bad).status, graph.get("messages", bad).code) == (
        400,
        "InefficientFilter",
    )


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"$select": "subject,nope"}, "RequestBroker--ParseUri"),
        ({"$top": "ten"}, "BadRequest"),
        ({"$skip": "-1"}, "BadRequest"),
        ({"$count": "yes"}, "BadRequest"),
        ({"$filter": "isRead = true"}, "BadRequest"),
        ({"$filter": "color eq 'red'"}, "RequestBroker--ParseUri"),
        ({"$filter": "receivedDateTime ge '2026-01-01'"}, "BadRequest"),
        ({"$orderby": "receivedDateTime sideways"}, "BadRequest"),
        ({"$search": "figures"}, "BadRequest"),
        ({"$expand": "extensions"}, "BadRequest"),
    ],
)
def test_bad_query_options_are_400(graph: Client, query: dict[str, str], code: str) -> None:
    """A query option the resource cannot apply is a 400 with Graph's code."""
    put(graph, mime())
    answer = graph.get("mailFolders/inbox/messages", query)
    assert (answer.status, answer.code) == (400, code)


# --- one message -----------------------------------------------------------------------------


def test_ids_unknown_and_malformed(graph: Client) -> None:
    """A well-formed id of nothing is 404 ErrorItemNotFound; a malformed one 400."""
    item = put(graph, mime())
    gone = rest(item)
    graph.store.delete(item)
    assert (graph.get(f"messages/{gone}").status, graph.get(f"messages/{gone}").code) == (
        404,
        "ErrorItemNotFound",
    )
    malformed = graph.get("messages/not-an-id")
    assert (malformed.status, malformed.code) == (400, "ErrorInvalidIdMalformed")
    folder = graph.get("mailFolders/nope/messages")
    assert (folder.status, folder.code) == (400, "ErrorInvalidIdMalformed")


def test_both_path_forms(graph: Client) -> None:
    """users/{u}/messages/{id} and users/{u}/mailFolders/{f}/messages/{id} name the same message;
    the folder form only in its folder."""
    item = put(graph, mime())
    inbox_id = to_rest_id(graph.mailbox.distinguished["inbox"].folder_id)
    for path in (
        f"messages/{rest(item)}",
        f"mailFolders/inbox/messages/{rest(item)}",
        f"mailFolders/{inbox_id}/messages/{rest(item)}",
    ):
        assert graph.get(path).json["id"] == rest(item)
    assert graph.get(f"mailFolders('inbox')/messages/{rest(item)}/attachments").status == 200
    assert graph.get(f"mailFolders/drafts/messages/{rest(item)}").code == "ErrorItemNotFound"


def test_patch_read_flag_is_an_ews_read_flag_change(graph: Client) -> None:
    """PATCH isRead goes through store.update: a new change key, and SyncFolderItems reports a
    ReadFlagChange."""
    item = put(graph, mime())
    inbox = graph.mailbox.distinguished["inbox"]
    _, since, _ = graph.store.sync(inbox, 0, 100)
    before = item.change_key
    answer = graph.call("PATCH", f"messages/{rest(item)}", body={"isRead": True})
    assert answer.status == 200
    assert answer.json["isRead"] is True
    assert answer.json["changeKey"] == item.change_key != before
    changes, _, _ = graph.store.sync(inbox, since, 100)
    assert [(c.kind, c.is_read) for c in changes] == [("ReadFlagChange", True)]


def test_patch_categories_flag_importance(graph: Client) -> None:
    """PATCH sets categories, flag (with its dates) and importance; EWS sees an Update."""
    item = put(graph, mime())
    patch = {
        "categories": ["Red category"],
        "importance": "high",
        "flag": {
            "flagStatus": "flagged",
            "dueDateTime": {"dateTime": "2026-12-04T17:00:00.0000000", "timeZone": "UTC"},
        },
    }
    answer = graph.call("PATCH", f"mailFolders/inbox/messages/{rest(item)}", body=patch)
    assert answer.json["categories"] == ["Red category"]
    assert answer.json["importance"] == "high"
    assert answer.json["flag"] == {
        "flagStatus": "flagged",
        "dueDateTime": {"dateTime": "2026-12-04T17:00:00.0000000", "timeZone": "UTC"},
    }
    assert item.flag.status == "Flagged"
    assert item.importance == "High"
    changes, _, _ = graph.store.sync(
        graph.mailbox.distinguished["inbox"], item.folder.log[0][0], 10
    )  # type: ignore[union-attr]
    assert [c.kind for c in changes] == ["Update"]


@pytest.mark.parametrize(
    ("patch", "status", "code"),
    [
        ({"isRead": "true"}, 400, "RequestBodyRead"),
        ({"importance": "urgent"}, 400, "RequestBodyRead"),
        ({"categories": "Red"}, 400, "RequestBodyRead"),
        ({"flag": {"flagStatus": "done"}}, 400, "RequestBodyRead"),
        ({"colour": "red"}, 400, "RequestBodyRead"),
        ({"subject": "changed"}, 400, "ErrorInvalidPropertyUpdateSentMessage"),
    ],
)
def test_patch_refuses(graph: Client, patch: dict[str, object], status: int, code: str) -> None:
    """PATCH refuses wrong types, unknown properties and a received message's subject."""
    item = put(graph, mime())
    answer = graph.call("PATCH", f"messages/{rest(item)}", body=patch)
    assert (answer.status, answer.code) == (status, code)
    assert item.version == 0


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PATCH", "", {"isRead": True}),
        ("DELETE", "", None),
        ("POST", "/move", {"destinationId": "archive"}),
        ("POST", "/copy", {"destinationId": "archive"}),
    ],
)
def test_writes_need_mail_readwrite(graph: Client, method: str, suffix: str, body: object) -> None:
    """Without Mail.ReadWrite every write is 403 ErrorAccessDenied and nothing changes."""
    item = put(graph, mime())
    answer = graph.call(method, f"messages/{rest(item)}{suffix}", body=body, can_write=False)
    assert (answer.status, answer.code) == (403, "ErrorAccessDenied")
    assert item.folder is graph.mailbox.distinguished["inbox"]
    assert item.version == 0


def test_delete_moves_to_deleted_items_then_recoverable_items(graph: Client) -> None:
    """DELETE is 204 and a move to Deleted Items; from there, to Recoverable Items."""
    item = put(graph, mime())
    assert graph.call("DELETE", f"messages/{rest(item)}").status == 204
    assert item.folder is graph.mailbox.distinguished["deleteditems"]
    assert graph.call("DELETE", f"messages/{rest(item)}").status == 204
    assert item.folder is graph.mailbox.distinguished["recoverableitemsdeletions"]


def test_value_is_the_mime_as_text_plain(graph: Client) -> None:
    """messages/{id}/$value is the MIME as delivered, Content-Type text/plain."""
    raw = mime(attach=True)
    item = put(graph, raw)
    answer = graph.get(f"messages/{rest(item)}/$value")
    assert (answer.raw, answer.content_type) == (raw, "text/plain")


@needs_samples
def test_move_answers_201_and_the_message_with_a_new_id(graph: Client) -> None:
    """move: 201 with the message shaped as message-move; a new REST id, the same immutable id."""
    item = put(graph, mime())
    old, immutable = rest(item), item.immutable_id
    answer = graph.call("POST", f"messages/{old}/move", body={"destinationId": "deleteditems"})
    assert answer.status == 201
    assert set(answer.json) == set(sample("message-move.http.txt"))
    assert answer.json["@odata.type"] == "#microsoft.graph.message"
    assert answer.json["id"] == rest(item) != old
    assert answer.json["parentFolderId"] == to_rest_id(
        graph.mailbox.distinguished["deleteditems"].folder_id
    )
    assert graph.get(f"messages/{old}").code == "ErrorItemNotFound"
    kept = graph.call(
        "POST", f"messages/{immutable}/move", body={"DestinationId": "inbox"}, immutable_ids=True
    )
    assert kept.json["id"] == immutable
    assert graph.get(f"messages/{immutable}", immutable_ids=True).json[
        "parentFolderId"
    ] == to_rest_id(graph.mailbox.distinguished["inbox"].folder_id)


def test_copy_answers_a_new_message(graph: Client) -> None:
    """copy: 201, a new message (new REST and immutable id) in the destination; the original
    stays."""
    item = put(graph, mime())
    answer = graph.call(
        "POST", f"messages/{rest(item)}/copy", body={"destinationId": "drafts"}, immutable_ids=True
    )
    assert answer.status == 201
    assert answer.json["id"] != item.immutable_id
    assert item.folder is graph.mailbox.distinguished["inbox"]
    assert len(graph.mailbox.distinguished["drafts"].items) == 1


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "ErrorInvalidParameter"),
        ({"destinationId": "nope"}, 400, "ErrorInvalidIdMalformed"),
        (
            {"destinationId": to_rest_id(base64.b64encode(b"\x00\x00EMUF" + bytes(20)).decode())},
            404,
            "ErrorItemNotFound",
        ),
    ],
)
def test_move_to_no_folder(graph: Client, body: dict[str, str], status: int, code: str) -> None:
    """move without a destination, to a malformed or an unknown one."""
    item = put(graph, mime())
    answer = graph.call("POST", f"messages/{rest(item)}/move", body=body)
    assert (answer.status, answer.code) == (status, code)


# --- attachments -----------------------------------------------------------------------------


@needs_samples
def test_file_attachment(graph: Client) -> None:
    """A file attachment is shaped as attachment-get-file; $value gives its bytes."""
    item = put(graph, mime(attach=True))
    listed = graph.get(f"messages/{rest(item)}/attachments")
    assert [a["name"] for a in listed.value] == ["figures.pdf"]
    attachment_id = listed.value[0]["id"]
    answer = graph.get(f"messages/{rest(item)}/attachments/{attachment_id}")
    assert set(answer.json) == set(sample("attachment-get-file.http.txt"))
    assert answer.json["@odata.type"] == "#microsoft.graph.fileAttachment"
    assert base64.b64decode(answer.json["contentBytes"]) == PDF
    assert (answer.json["size"], answer.json["contentType"], answer.json["isInline"]) == (
        len(PDF),
        "application/pdf",
        False,
    )
    raw = graph.get(f"messages/{rest(item)}/attachments/{attachment_id}/$value")
    assert (raw.raw, raw.content_type) == (PDF, "application/pdf")
    assert graph.get(f"messages/{rest(item)}").json["hasAttachments"] is True


@needs_samples
def test_item_attachment_and_its_expansion(graph: Client) -> None:
    """An attached message is an itemAttachment (attachment-get-item); $expand gives its item
    (attachment-get-item-expand) and $value its MIME."""
    item = put(graph, mime(attach_message=True))
    [listed] = graph.get(f"messages/{rest(item)}/attachments").value
    path = f"messages/{rest(item)}/attachments/{listed['id']}"
    plain = graph.get(path)
    assert set(plain.json) == set(sample("attachment-get-item.http.txt"))
    assert plain.json["contentType"] is None
    expanded = graph.get(path, {"$expand": "microsoft.graph.itemAttachment/item"})
    documented = sample("attachment-get-item-expand.http.txt")
    assert set(expanded.json) == set(documented)
    inner = expanded.json["item"]
    # The docs' example has conversationIndex and a webLink the emulator does not make for an
    # embedded item; everything we give is in it.
    assert set(documented["item"]) - set(inner) == {"conversationIndex", "webLink"}
    assert set(inner) <= set(documented["item"])
    assert (inner["@odata.type"], inner["id"], inner["subject"]) == (
        "#microsoft.graph.message",
        "",
        "Let's go for lunch",
    )
    value = graph.get(f"{path}/$value")
    assert value.raw is not None
    assert b"Subject: Let's go for lunch" in value.raw


def test_attachment_ids(graph: Client) -> None:
    """Another message's attachment is 404 here; a malformed attachment id is 400."""
    one = put(graph, mime("one", attach=True))
    other = put(graph, mime("other"))
    [attachment] = graph.get(f"messages/{rest(one)}/attachments").value
    assert (
        graph.get(f"messages/{rest(other)}/attachments/{attachment['id']}").code
        == "ErrorItemNotFound"
    )
    assert graph.get(f"messages/{rest(one)}/attachments/xyz").code == "ErrorInvalidIdMalformed"
    selected = graph.get(f"messages/{rest(one)}/attachments", {"$select": "name,size"})
    assert set(selected.value[0]) == {"@odata.type", "id", "name", "size"}


def test_inline_image_is_an_inline_attachment(graph: Client) -> None:
    """An image with a Content-ID in multipart/related is isInline with its contentId, and does
    not make hasAttachments true (as Exchange)."""
    message = EmailMessage()
    message["From"] = "dana@example.com"
    message["Subject"] = "logo"
    message.set_content("see logo")
    message.add_alternative('<p><img src="cid:logo@x"></p>', subtype="html")
    html_part = message.get_payload()[1]
    html_part.add_related(b"\x89PNG fake", maintype="image", subtype="png", cid="<logo@x>")
    item = put(graph, message.as_bytes(policy=SMTP))
    [image] = graph.get(f"messages/{rest(item)}/attachments").value
    assert (image["isInline"], image["contentId"], image["contentType"]) == (
        True,
        "logo@x",
        "image/png",
    )
    assert graph.get(f"messages/{rest(item)}").json["hasAttachments"] is False


def test_expand_attachments_on_a_message(graph: Client) -> None:
    """$expand=attachments puts the attachments in the message."""
    item = put(graph, mime(attach=True))
    answer = graph.get(f"messages/{rest(item)}", {"$expand": "attachments", "$select": "subject"})
    assert [a["name"] for a in answer.json["attachments"]] == ["figures.pdf"]


def test_a_meeting_request_is_an_event_message_request(graph: Client) -> None:
    """A meeting request is typed #microsoft.graph.eventMessageRequest (a derived type)."""
    item = graph.store.parse(mime("Planning"), item_class="IPM.Schedule.Meeting.Request")
    graph.store.file(graph.mailbox.distinguished["inbox"], item)
    answer = graph.get(f"messages/{rest(item)}")
    assert answer.json["@odata.type"] == "#microsoft.graph.eventMessageRequest"


def test_patch_as_documented(graph: Client) -> None:
    """The message-update sample: subject, body and inferenceClassification of a draft."""
    draft = graph.store.new_item(subject="draft", text_body="first", is_draft=True)
    graph.store.file(graph.mailbox.distinguished["drafts"], draft, new_mail=False)
    patch = {
        "subject": "subject-value",
        "body": {"contentType": "text", "content": "content-value"},
        "inferenceClassification": "other",
    }
    answer = graph.call("PATCH", f"messages/{rest(draft)}", body=patch)
    assert answer.status == 200
    assert answer.json["subject"] == "subject-value"
    assert answer.json["body"] == {"contentType": "text", "content": "content-value"}
    assert answer.json["inferenceClassification"] == "other"
    assert graph.get(f"messages/{rest(draft)}").json["inferenceClassification"] == "other"
    refused = graph.call(
        "PATCH", f"messages/{rest(draft)}", body={"inferenceClassification": "spam"}
    )
    assert (refused.status, refused.code) == (400, "RequestBodyRead")


def test_patch_a_draft(graph: Client) -> None:
    """A draft's subject and body may change; the answer shows them."""
    draft = graph.store.new_item(subject="draft", text_body="first", is_draft=True)
    graph.store.file(graph.mailbox.distinguished["drafts"], draft, new_mail=False)
    patch = {"subject": "second thoughts", "body": {"contentType": "html", "content": "<p>new</p>"}}
    answer = graph.call("PATCH", f"messages/{rest(draft)}", body=patch)
    assert answer.json["subject"] == "second thoughts"
    assert answer.json["body"] == {"contentType": "html", "content": "<p>new</p>"}
    assert (draft.html_body, draft.text_body) == ("<p>new</p>", None)
