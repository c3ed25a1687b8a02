"""``mailFolders/{f}/messages/delta`` (graph/delta.py) on the folder change logs EWS
SyncFolderItems reads, called directly; every page is validated against the delta response schema
of the OpenAPI description and compared with the documented pages of ../shared/graph-samples."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import pytest

from ews_listener_emulators.graph._ids import to_rest_id
from ews_listener_emulators.graph.delta import DeltaState
from ews_listener_emulators.store import Item, MailStore
from tests.graph_emulator.direct import ALICE, Answer, Client, deliver, sample, samples_available

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
DELTA = "mailFolders/inbox/messages/delta"
# Without ../shared/graph-samples these skip elsewhere and fail in CI (which always has them).
needs_samples = pytest.mark.skipif(
    not samples_available() and not os.environ.get("CI"), reason="../shared/graph-samples"
)


def mime(subject: str) -> bytes:
    message = EmailMessage()
    message["From"] = "Dana Swope <dana@example.com>"
    message["To"] = ALICE
    message["Subject"] = subject
    message.set_content(f"About {subject}.")
    return message.as_bytes()


@pytest.fixture
def graph() -> Client:
    store = MailStore()
    mailbox = store.add_mailbox(ALICE, "Alice Example")
    return Client(store, mailbox)


def put(graph: Client, subject: str, folder: str = "inbox", minute: int = 0) -> Item:
    return deliver(
        graph.store,
        graph.mailbox,
        mime(subject),
        folder,
        received_at=T0 + timedelta(minutes=minute),
    )


def round_of(graph: Client, first: Answer, **kwargs: Any) -> tuple[list[Answer], str]:
    """Follow nextLinks from ``first`` to the deltaLink: (pages, deltaLink)."""
    pages = [first]
    while "@odata.nextLink" in pages[-1].json:
        assert "@odata.deltaLink" not in pages[-1].json
        pages.append(graph.follow(pages[-1].json["@odata.nextLink"], **kwargs))
    return pages, pages[-1].json["@odata.deltaLink"]


def subjects(pages: list[Answer]) -> list[str]:
    return [m["subject"] for page in pages for m in page.value if "subject" in m]


@needs_samples
def test_initial_round_pages_like_the_docs(graph: Client) -> None:
    """An initial round with $select and Prefer: odata.maxpagesize=2 pages as the docs'
    delta-messages-initial/page2/last-page samples: nextLinks with $skiptoken, then a deltaLink
    with $deltatoken; items carry @odata.type, @odata.etag, the selected properties and id."""
    for n in range(5):
        put(graph, f"message {n}", minute=n)
    first = graph.get(DELTA, {"$select": "subject,sender,isRead"}, max_page_size=2)
    assert first.headers == {"Preference-Applied": "odata.maxpagesize=2"}
    pages, delta_link = round_of(graph, first, max_page_size=2)
    assert [len(p.value) for p in pages] == [2, 2, 1]
    assert subjects(pages) == [f"message {n}" for n in range(5)]
    initial = sample("delta-messages-initial-page-next.http.txt")
    assert set(first.json) == set(initial)
    assert set(pages[1].json) == set(sample("delta-messages-page2-next.http.txt"))
    assert set(pages[2].json) == set(sample("delta-messages-last-page-deltalink.http.txt"))
    assert {frozenset(m) for p in pages for m in p.value} == {frozenset(initial["value"][0])}
    assert first.json["@odata.context"].endswith("/$metadata#Collection(message)")
    assert (
        "/users/alice%40contoso.com/mailFolders('inbox')/messages/delta?$skiptoken="
        in first.json["@odata.nextLink"]
    )
    assert "/mailFolders('inbox')/messages/delta?$deltatoken=" in delta_link
    # $select travels in the token: the next pages were asked for without it.
    assert "body" not in pages[1].value[0]


def test_default_page_size_is_ten(graph: Client) -> None:
    """Without odata.maxpagesize a page has 10 messages."""
    for n in range(12):
        put(graph, f"message {n}", minute=n)
    pages, _ = round_of(graph, graph.get(DELTA))
    assert [len(p.value) for p in pages] == [10, 2]
    assert set(pages[0].value[0]) >= {"@odata.type", "@odata.etag", "id", "subject", "body"}


@needs_samples
def test_next_round_reports_changes_and_removals(graph: Client) -> None:
    """The next round from the deltaLink: new mail and read-flag changes as messages, a deleted
    message as @removed deleted and one moved away as @removed changed
    (delta-messages-next-round-removed); the moved one is new in its new folder's delta."""
    kept, read, moved, deleted = (
        put(graph, s, minute=n) for n, s in enumerate(["kept", "read", "moved", "deleted"])
    )
    _, inbox_link = round_of(graph, graph.get(DELTA))
    _, archive_link = round_of(graph, graph.get("mailFolders/archive/messages/delta"))
    old_moved, old_deleted = to_rest_id(moved.item_id), to_rest_id(deleted.item_id)
    graph.call("PATCH", f"messages/{to_rest_id(read.item_id)}", body={"isRead": True})
    graph.call("POST", f"messages/{old_moved}/move", body={"destinationId": "archive"})
    graph.store.delete(deleted)
    put(graph, "new", minute=9)
    answer = graph.follow(inbox_link)
    assert "@odata.deltaLink" in answer.json
    by_id = {m["id"]: m for m in answer.value}
    assert by_id[old_deleted] == {
        "@odata.type": "#microsoft.graph.message",
        "id": old_deleted,
        "@removed": {"reason": "deleted"},
    }
    assert by_id[old_moved]["@removed"] == {"reason": "changed"}
    assert by_id[to_rest_id(read.item_id)]["isRead"] is True
    assert {m.get("subject") for m in answer.value} == {"read", "new", None}
    assert to_rest_id(kept.item_id) not in by_id
    removed = sample("delta-messages-next-round-removed.http.txt")["value"][0]
    assert set(by_id[old_deleted]) == set(removed)
    archived = graph.follow(archive_link)
    assert [(m["id"], m["subject"]) for m in archived.value] == [
        (to_rest_id(moved.item_id), "moved")
    ]


def test_immutable_ids_name_a_moved_message_alike_in_both_folders(graph: Client) -> None:
    """With Prefer: IdType="ImmutableId" the removal from the old folder and the arrival in the
    new one carry the same id, and a hard delete names the message by it too."""
    moved, deleted = put(graph, "moved"), put(graph, "deleted")
    _, inbox_link = round_of(graph, graph.get(DELTA, immutable_ids=True), immutable_ids=True)
    _, drafts_link = round_of(
        graph, graph.get("mailFolders/drafts/messages/delta", immutable_ids=True)
    )
    graph.store.move(moved, graph.mailbox.distinguished["drafts"])
    graph.store.delete(deleted)
    removed = graph.follow(inbox_link, immutable_ids=True).value
    assert {(m["id"], m["@removed"]["reason"]) for m in removed} == {
        (moved.immutable_id, "changed"),
        (deleted.immutable_id, "deleted"),
    }
    arrived = graph.follow(drafts_link, immutable_ids=True).value
    assert [m["id"] for m in arrived] == [moved.immutable_id]


def test_a_move_to_recoverable_items_is_deleted(graph: Client) -> None:
    """A message deleted from Deleted Items (now in Recoverable Items) is @removed deleted."""
    item = put(graph, "twice", "deleteditems")
    _, link = round_of(graph, graph.get("mailFolders/deleteditems/messages/delta"))
    graph.call("DELETE", f"messages/{to_rest_id(item.item_id)}")
    [removed] = graph.follow(link).value
    assert removed["@removed"] == {"reason": "deleted"}


def test_replaying_a_link_gives_the_same_answer(graph: Client) -> None:
    """A nextLink or deltaLink replayed answers the same page again (nothing is consumed)."""
    for n in range(3):
        put(graph, f"message {n}", minute=n)
    first = graph.get(DELTA, max_page_size=2)
    link = first.json["@odata.nextLink"]
    once, twice = graph.follow(link, max_page_size=2), graph.follow(link, max_page_size=2)
    assert once.json == twice.json
    _, delta_link = round_of(graph, first, max_page_size=2)
    put(graph, "later", minute=5)
    again = [graph.follow(delta_link) for _ in range(2)]
    assert again[0].json == again[1].json
    assert [m["subject"] for m in again[0].value] == ["later"]
    # A round without changes answers its own deltaLink again, as the docs' next-round sample.
    _, quiet = round_of(graph, again[0])
    assert graph.follow(quiet).json["@odata.deltaLink"] == quiet


def test_change_type_filters_later_rounds_only(graph: Client) -> None:
    """changeType=created: the initial round has everything, later rounds only new messages."""
    old = put(graph, "old")
    pages, link = round_of(graph, graph.get(DELTA, {"changeType": "created"}))
    assert subjects(pages) == ["old"]
    graph.call("PATCH", f"messages/{to_rest_id(old.item_id)}", body={"isRead": True})
    put(graph, "new")
    assert [m["subject"] for m in graph.follow(link).value] == ["new"]
    deleted_only = round_of(graph, graph.get(DELTA, {"changeType": "deleted"}))[1]
    graph.store.delete(old)
    put(graph, "newer")
    assert [m["@removed"]["reason"] for m in graph.follow(deleted_only).value] == ["deleted"]


@pytest.mark.parametrize(
    "token",
    [
        "not-a-token",
        DeltaState("x", 0).encode()[:-2] + "AA",  # tampered
        "",  # an empty $skiptoken is the initial request, not an error
    ],
    ids=["not-a-token", "tampered", "empty"],  # fixed ids: pytest-xdist workers must agree
)
def test_a_dead_token_is_410_sync_state_not_found(graph: Client, token: str) -> None:
    """A token that is not ours is 410 Gone, syncStateNotFound, with a Location to start over
    (delta-sync-reset-and-token-expiry.prose.txt)."""
    put(graph, "message")
    answer = graph.get(DELTA, {"$deltatoken": token})
    if not token:
        assert answer.status == 200
        return
    assert (answer.status, answer.code) == (410, "syncStateNotFound")
    assert answer.headers is not None
    assert answer.headers["Location"].endswith("/mailFolders('inbox')/messages/delta?$deltatoken=")


def test_a_token_of_another_folder_or_store_is_dead(graph: Client) -> None:
    """Another folder's token, or one from before a store reset, is 410 too."""
    _, link = round_of(graph, graph.get(DELTA))
    token = link.split("$deltatoken=")[1]
    other = graph.get("mailFolders/drafts/messages/delta", {"$deltatoken": token})
    assert (other.status, other.code) == (410, "syncStateNotFound")
    graph.store.reset()
    graph.mailbox = graph.store.add_mailbox(ALICE)
    assert graph.get(DELTA, {"$deltatoken": token}).status == 410


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"changeType": "moved"}, "BadRequest"),
        ({"$select": "nope"}, "RequestBroker--ParseUri"),
        ({"$filter": "isRead eq true"}, "BadRequest"),
    ],
)
def test_bad_delta_options(graph: Client, query: dict[str, str], code: str) -> None:
    """Unsupported options and values are 400."""
    assert graph.get(DELTA, query).code == code


def test_delta_across_folders_is_refused(graph: Client) -> None:
    """users/{u}/messages/delta is not change-tracked (per folder only)."""
    answer = graph.get("messages/delta")
    assert (answer.status, answer.code) == (400, "BadRequest")
