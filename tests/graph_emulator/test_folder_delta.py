"""``users/{u}/mailFolders/delta`` (graph/folder_delta.py) over HTTPS: rounds across pages, created,
updated and deleted folders, ``$select``, replayed links and dead tokens, compared with the
documented page of ../shared/graph-samples/delta-mailfolders-page-next.http.txt."""

from __future__ import annotations

import os
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.server import EwsEmulator
from tests.graph_emulator.conftest import ALICE, BOB, Call
from tests.graph_emulator.direct import sample, samples_available

FOLDERS = f"users/{ALICE}/mailFolders"
DELTA = f"{FOLDERS}/delta"
PAGE_OF_TWO = {"Prefer": "odata.maxpagesize=2"}
# Every mail folder below the message folder root (Calendar, Contacts … are not mail folders).
MAIL_FOLDERS = {
    "Archive",
    "Conversation History",
    "Deleted Items",
    "Drafts",
    "Inbox",
    "Junk Email",
    "Outbox",
    "Sent Items",
}
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


def round_of(call: Call, first: httpx.Response, **kwargs: Any) -> tuple[list[Any], str]:
    """Follow nextLinks from ``first`` to the deltaLink: (pages' JSON, deltaLink)."""
    assert first.status_code == 200, first.text
    pages = [first.json()]
    while "@odata.nextLink" in pages[-1]:
        assert "@odata.deltaLink" not in pages[-1]
        answer = call("GET", pages[-1]["@odata.nextLink"], **kwargs)
        assert answer.status_code == 200, answer.text
        pages.append(answer.json())
    return pages, pages[-1]["@odata.deltaLink"]


def entries(pages: list[Any]) -> list[dict[str, Any]]:
    return [entry for page in pages for entry in page["value"]]


def names(pages: list[Any]) -> set[str]:
    return {entry["displayName"] for entry in entries(pages) if "displayName" in entry}


@needs_samples
def test_initial_round_pages_like_the_docs(graph: GraphEmulator, call: Call) -> None:
    """An initial round with Prefer: odata.maxpagesize=2 pages as delta-mailfolders-page-next:
    absolute nextLinks on …/mailFolders/delta with $skiptoken, then a deltaLink with
    $deltatoken; every mail folder once, child folders included, with the sample's properties."""
    inbox = call("GET", f"{FOLDERS}/inbox").json()
    assert call("POST", f"{FOLDERS}/inbox/childFolders", json={"displayName": "Invoices"})
    first = call("GET", DELTA, headers=PAGE_OF_TWO)
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=2"
    pages, delta_link = round_of(call, first, headers=PAGE_OF_TWO)
    assert all(len(page["value"]) == 2 for page in pages[:-1])
    documented = sample("delta-mailfolders-page-next.http.txt")
    assert set(documented) <= set(pages[0])
    assert pages[0]["@odata.nextLink"].startswith(f"{graph.url}/users/")
    assert "/mailFolders/delta?$skiptoken=" in pages[0]["@odata.nextLink"]
    assert delta_link.startswith(f"{graph.url}/users/")
    assert "/mailFolders/delta?$deltatoken=" in delta_link
    listed = entries(pages)
    assert names(pages) == MAIL_FOLDERS | {"Invoices"}
    assert len(listed) == len(MAIL_FOLDERS) + 1  # once each
    assert all(set(documented["value"][0]) <= set(entry) for entry in listed)
    invoices = next(e for e in listed if e["displayName"] == "Invoices")
    assert invoices["parentFolderId"] == inbox["id"]


def test_next_round_lists_created_updated_and_deleted_folders(
    graph: GraphEmulator, ews: EwsEmulator, call: Call
) -> None:
    """After a round, the next lists only what changed: a new folder, its parent (one more
    child), a folder that got mail (its counts), and a deleted one as @removed "deleted"."""
    doomed = call("POST", FOLDERS, json={"displayName": "Doomed"}).json()
    _, delta_link = round_of(call, call("GET", DELTA))
    empty = call("GET", delta_link).json()
    assert empty["value"] == []
    assert "@odata.deltaLink" in empty
    created = call("POST", f"{FOLDERS}/inbox/childFolders", json={"displayName": "Receipts"})
    ews.deliver(ALICE, mime("an invoice"), "drafts")
    assert call("DELETE", f"{FOLDERS}/{doomed['id']}").status_code == 204
    pages, _ = round_of(call, call("GET", delta_link))
    by_id = {entry["id"]: entry for entry in entries(pages)}
    assert names(pages) == {"Receipts", "Inbox", "Drafts"}
    inbox_id = call("GET", f"{FOLDERS}/inbox").json()["id"]
    assert by_id[created.json()["id"]]["parentFolderId"] == inbox_id
    assert by_id[inbox_id]["childFolderCount"] == 1
    drafts = next(e for e in by_id.values() if e.get("displayName") == "Drafts")
    assert (drafts["totalItemCount"], drafts["unreadItemCount"]) == (1, 1)
    assert by_id[doomed["id"]] == {"id": doomed["id"], "@removed": {"reason": "deleted"}}
    assert call("GET", f"{FOLDERS}/{doomed['id']}").status_code == 404


def test_select_is_kept_across_the_round(call: Call) -> None:
    """$select on the first request holds for every page of the round and the next rounds."""
    first = call("GET", f"{DELTA}?$select=displayName,totalItemCount", headers=PAGE_OF_TWO)
    pages, delta_link = round_of(call, first, headers=PAGE_OF_TWO)
    assert all(list(e) == ["id", "displayName", "totalItemCount"] for e in entries(pages))
    call("POST", FOLDERS, json={"displayName": "Later"})
    later = call("GET", delta_link).json()["value"]
    assert later
    assert all(list(e) == ["id", "displayName", "totalItemCount"] for e in later)


def test_replaying_a_link_gives_the_same_answer(call: Call) -> None:
    """A nextLink or deltaLink followed twice answers the same page again."""
    first = call("GET", DELTA, headers=PAGE_OF_TWO).json()
    link = first["@odata.nextLink"]
    again = call("GET", link, headers=PAGE_OF_TWO).json()
    assert again == call("GET", link, headers=PAGE_OF_TWO).json()
    _, delta_link = round_of(call, call("GET", DELTA))
    call("POST", FOLDERS, json={"displayName": "Twice"})
    assert call("GET", delta_link).json() == call("GET", delta_link).json()
    assert names([call("GET", delta_link).json()]) >= {"Twice"}


def test_a_dead_token_is_410_sync_state_not_found(graph: GraphEmulator, call: Call) -> None:
    """A token not ours, a message-delta token, or another mailbox's is 410 Gone,
    syncStateNotFound, with a Location to start over (delta-sync-reset-and-token-expiry)."""
    _, message_link = round_of(call, call("GET", f"{FOLDERS}/inbox/messages/delta"))
    _, bob_link = round_of(call, call("GET", f"users/{BOB}/mailFolders/delta"))
    tokens = [
        "not-a-token",
        message_link.split("$deltatoken=")[1],
        bob_link.split("$deltatoken=")[1],
    ]
    for token in tokens:
        answer = call("GET", f"{DELTA}?$deltatoken={token}")
        assert answer.status_code == 410, token
        assert answer.json()["error"]["code"] == "syncStateNotFound"
        assert answer.headers["Location"].endswith("/mailFolders/delta?$deltatoken=")
    restart = call("GET", answer.headers["Location"])
    assert restart.status_code == 200
    assert names([restart.json()]) <= MAIL_FOLDERS


def test_a_token_from_before_a_store_reset_is_dead(
    graph: GraphEmulator, ews: EwsEmulator, call: Call
) -> None:
    """The mail store forgotten (``reset``), a deltaLink from before is 410."""
    _, delta_link = round_of(call, call("GET", DELTA))
    ews.reset()
    ews.add_mailbox(ALICE, "Alice Example")
    assert call("GET", delta_link).status_code == 410


@pytest.mark.parametrize(
    ("query", "code"),
    [("$select=nope", "RequestBroker--ParseUri"), ("$filter=displayName eq 'x'", "BadRequest")],
)
def test_bad_options_are_400(call: Call, query: str, code: str) -> None:
    """An unknown property or an option folder delta does not take is 400."""
    answer = call("GET", f"{DELTA}?{query}")
    assert (answer.status_code, answer.json()["error"]["code"]) == (400, code)


def test_a_well_known_folder_cannot_be_deleted(call: Call) -> None:
    """DELETE on a well-known folder is refused as Exchange refuses DeleteFolder on one."""
    answer = call("DELETE", f"{FOLDERS}/inbox")
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "ErrorDeleteDistinguishedFolder"


def test_an_injected_dead_token_is_the_documented_410(graph: GraphEmulator, call: Call) -> None:
    """The delta_token_invalidated fault hits folder delta too, with Location on
    mailFolders/delta (not on a folder's messages/delta)."""
    _, delta_link = round_of(call, call("GET", DELTA))
    graph.faults.add("delta_token_invalidated", mailbox=ALICE)
    answer = call("GET", delta_link)
    assert answer.status_code == 410
    assert answer.json()["error"]["code"] == "syncStateNotFound"
    location = answer.headers["Location"]
    assert location.endswith("/users/alice%40contoso.com/mailFolders/delta?$deltatoken=")
    assert call("GET", delta_link).status_code == 200  # the rule is spent, the token was fine
