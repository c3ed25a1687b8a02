"""``users/{id | upn}``, ``mailFolders`` (well-known names, paging, ``$select``, ``$count``) and
``childFolders`` (GET, POST), as Microsoft Graph v1.0 documents them."""

from __future__ import annotations

import pytest

from ews_listener_emulators.graph.server import GraphEmulator
from tests.graph_emulator.conftest import ALICE, Call

FOLDERS = f"users/{ALICE}/mailFolders"
TOP_LEVEL = [
    "Archive",
    "Conversation History",
    "Deleted Items",
    "Drafts",
    "Inbox",
    "Junk Email",
    "Outbox",
    "Sent Items",
]
MAILFOLDER_KEYS = [
    "id",
    "displayName",
    "parentFolderId",
    "childFolderCount",
    "unreadItemCount",
    "totalItemCount",
    "isHidden",
]


def test_user_by_upn_and_by_id(graph: GraphEmulator, call: Call) -> None:
    """users/{upn} and users/{id} name the same user: id, displayName, mail, userPrincipalName."""
    user = call("GET", f"users/{ALICE}").json()
    assert user["@odata.context"] == f"{graph.url}/$metadata#users/$entity"
    assert (user["displayName"], user["mail"], user["userPrincipalName"]) == (
        "Alice Example",
        ALICE,
        ALICE,
    )
    assert call("GET", f"users/{user['id']}").json() == user
    assert call("GET", "users/ALICE@Contoso.com").json()["id"] == user["id"]
    assert call("GET", f"users('{ALICE}')").json()["id"] == user["id"]


def test_user_select(call: Call) -> None:
    """$select on a user keeps id and the named properties."""
    user = call("GET", f"users/{ALICE}?$select=mail").json()
    assert set(user) == {"@odata.context", "id", "mail"}


def test_mail_folders_lists_the_top_level_mail_folders(graph: GraphEmulator, call: Call) -> None:
    """The folders under the root, mail folders only, by name, each a mailFolder."""
    body = call("GET", FOLDERS).json()
    assert body["@odata.context"] == (
        f"{graph.url}/$metadata#users('alice%40contoso.com')/mailFolders"
    )
    assert [f["displayName"] for f in body["value"]] == TOP_LEVEL
    assert "@odata.nextLink" not in body
    root = call("GET", f"{FOLDERS}/msgfolderroot").json()
    for folder in body["value"]:
        assert list(folder) == MAILFOLDER_KEYS
        assert folder["parentFolderId"] == root["id"]
        assert folder["isHidden"] is False


@pytest.mark.parametrize(
    ("name", "display"),
    [
        ("inbox", "Inbox"),
        ("Inbox", "Inbox"),
        ("deleteditems", "Deleted Items"),
        ("drafts", "Drafts"),
        ("sentitems", "Sent Items"),
        ("junkemail", "Junk Email"),
        ("archive", "Archive"),
        ("msgfolderroot", "Top of Information Store"),
    ],
)
def test_well_known_names(call: Call, name: str, display: str) -> None:
    """Each well-known name is usable as a folder id, in the path and in key syntax."""
    folder = call("GET", f"{FOLDERS}/{name}").json()
    assert folder["displayName"] == display
    assert call("GET", f"{FOLDERS}('{name}')").json()["id"] == folder["id"]
    assert call("GET", f"{FOLDERS}/{folder['id']}").json()["displayName"] == display


def test_paging_with_top_and_next_link(call: Call) -> None:
    """$top=3 pages the list; each @odata.nextLink moves $skip on until the last page."""
    url = f"{FOLDERS}?$top=3"
    seen: list[str] = []
    links: list[str] = []
    while url:
        body = call("GET", url).json()
        seen += [f["displayName"] for f in body["value"]]
        url = body.get("@odata.nextLink", "")
        links.append(url)
    assert seen == TOP_LEVEL
    assert links[0].endswith("/mailFolders?%24top=3&%24skip=3")
    assert links[-1] == ""


def test_default_page_is_ten(call: Call) -> None:
    """Without $top, ten folders a page, as Exchange pages mail folders."""
    for index in range(5):
        assert call("POST", FOLDERS, json={"displayName": f"Project {index}"}).status_code == 201
    body = call("GET", FOLDERS).json()
    assert len(body["value"]) == 10
    assert body["@odata.nextLink"].endswith("/mailFolders?%24skip=10")
    rest = call("GET", body["@odata.nextLink"]).json()
    assert len(rest["value"]) == 3
    assert "@odata.nextLink" not in rest


def test_count_and_skip(call: Call) -> None:
    """$count=true adds @odata.count (all of them); $skip starts later."""
    body = call("GET", f"{FOLDERS}?$count=true&$skip=6").json()
    assert body["@odata.count"] == len(TOP_LEVEL)
    assert [f["displayName"] for f in body["value"]] == TOP_LEVEL[6:]


def test_select_on_folders(graph: GraphEmulator, call: Call) -> None:
    """$select keeps id and the named properties and names them in @odata.context."""
    body = call("GET", f"{FOLDERS}?$select=displayName,totalItemCount").json()
    assert body["@odata.context"].endswith("/mailFolders(id,displayName,totalItemCount)")
    assert all(list(f) == ["id", "displayName", "totalItemCount"] for f in body["value"])
    one = call("GET", f"{FOLDERS}/inbox?$select=unreadItemCount").json()
    assert set(one) == {"@odata.context", "id", "unreadItemCount"}
    assert one["@odata.context"].endswith("/mailFolders(id,unreadItemCount)/$entity")


def test_child_folders_create_and_list(call: Call) -> None:
    """POST childFolders creates (201, a mailFolder); GET lists it; counts follow."""
    inbox = call("GET", f"{FOLDERS}/inbox").json()
    assert inbox["childFolderCount"] == 0
    created = call("POST", f"{FOLDERS}/inbox/childFolders", json={"displayName": "Processed"})
    assert created.status_code == 201
    child = created.json()
    assert child["@odata.context"].endswith("/mailFolders('inbox')/childFolders/$entity")
    assert (child["displayName"], child["parentFolderId"]) == ("Processed", inbox["id"])
    assert (child["childFolderCount"], child["totalItemCount"]) == (0, 0)
    listed = call("GET", f"{FOLDERS}/inbox/childFolders").json()
    assert listed["@odata.context"].endswith("/mailFolders('inbox')/childFolders")
    assert [f["id"] for f in listed["value"]] == [child["id"]]
    assert call("GET", f"{FOLDERS}/inbox").json()["childFolderCount"] == 1
    grand = call("POST", f"{FOLDERS}/{child['id']}/childFolders", json={"displayName": "2026"})
    assert grand.json()["parentFolderId"] == child["id"]
    again = call("GET", f"{FOLDERS}/inbox/childFolders/{child['id']}").json()
    assert again["childFolderCount"] == 1


def test_child_folder_name_conflict_is_409(call: Call) -> None:
    """A second child of the same name (any case): 409 ErrorFolderExists."""
    call("POST", f"{FOLDERS}/inbox/childFolders", json={"displayName": "Dup"})
    response = call("POST", f"{FOLDERS}/inbox/childFolders", json={"displayName": "dup"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "ErrorFolderExists"


def test_child_folder_needs_a_display_name(call: Call) -> None:
    """A POST without displayName: 400."""
    response = call("POST", f"{FOLDERS}/inbox/childFolders", json={})
    assert response.status_code == 400


def test_child_folders_of_an_unknown_folder_is_404(call: Call) -> None:
    """childFolders of a folder that does not exist: 404 ErrorItemNotFound."""
    bob_inbox = call("GET", "users/bob@contoso.com/mailFolders/inbox").json()["id"]
    response = call("GET", f"{FOLDERS}/{bob_inbox}/childFolders")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ErrorItemNotFound"


@pytest.mark.parametrize("option", ["$filter=displayName eq 'Inbox'", "$orderby=displayName"])
def test_options_not_emulated_are_501(call: Call, option: str) -> None:
    """Folder options the emulator does not implement are refused (501), not ignored."""
    response = call("GET", f"{FOLDERS}?{option}")
    assert response.status_code == 501
    assert response.json()["error"]["code"] == "NotImplemented"
