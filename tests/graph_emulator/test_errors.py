"""Graph's error answers: the ODataError shape on every one, and which status and code each
mistake gets (Graph docs, concepts/errors.md; ../shared/graph-samples/error-*.http.txt)."""

from __future__ import annotations

import re

import pytest

from ews_listener_emulators.graph.server import GraphEmulator
from tests.graph_emulator.conftest import ALICE, Call

INBOX = f"users/{ALICE}/mailFolders/inbox"
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d$")  # no offset, as Graph writes it


def test_odata_error_shape_and_ids(call: Call) -> None:
    """error.code, error.message, innerError with date, request-id and the client's own id."""
    response = call("GET", f"users/{ALICE}/mailFolders/nope", headers={"client-request-id": "c-1"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "innerError"}
    inner = error["innerError"]
    assert DATE.match(inner["date"])
    assert inner["request-id"] == response.headers["request-id"]
    assert inner["client-request-id"] == response.headers["client-request-id"] == "c-1"


def test_client_request_id_defaults_to_the_request_id(call: Call) -> None:
    """Without client-request-id, Graph answers one (the request id)."""
    response = call("GET", INBOX)
    assert response.headers["client-request-id"] == response.headers["request-id"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("users/nobody@contoso.com/mailFolders", 404, "ErrorInvalidUser"),
        ("users/nobody@contoso.com", 404, "Request_ResourceNotFound"),
        (f"users/{ALICE}/mailFolders/nope", 400, "ErrorInvalidIdMalformed"),
        (f"users/{ALICE}/mailFolders/inbox/nonsense", 400, "BadRequest"),
        (f"users/{ALICE}/calendarView", 400, "BadRequest"),
        ("groups/x", 400, "BadRequest"),
        ("users", 501, "NotImplemented"),
        (f"{INBOX}?$top=abc", 400, "BadRequest"),
        (f"{INBOX}?$top=-1", 400, "BadRequest"),
        (f"{INBOX}?$skip=x", 400, "BadRequest"),
        (f"{INBOX}?$count=maybe", 400, "BadRequest"),
        (f"{INBOX}?$top=1&$top=2", 400, "BadRequest"),
        (f"{INBOX}?$frobnicate=1", 400, "BadRequest"),
        (f"{INBOX}?$select=displayName,nope", 400, "RequestBroker--ParseUri"),
    ],
)
def test_error_codes(call: Call, path: str, status: int, code: str) -> None:
    """Each mistake gets its status and code, in the ODataError shape."""
    response = call("GET", path)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert response.json()["error"]["message"]


def test_unknown_folder_of_another_mailbox_is_404(call: Call) -> None:
    """Alice's inbox id read in Bob's mailbox names nothing there: 404 ErrorItemNotFound."""
    inbox = call("GET", INBOX).json()["id"]
    response = call("GET", f"users/bob@contoso.com/mailFolders/{inbox}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "ErrorItemNotFound"
    assert response.json()["error"]["message"] == "The specified object was not found in the store."


def test_select_error_names_the_property_and_type(call: Call) -> None:
    """An unknown $select property is named with its type, as Graph's URI parser says it."""
    error = call("GET", f"{INBOX}?$select=nope").json()["error"]
    assert (
        error["message"]
        == "Could not find a property named 'nope' on type 'microsoft.graph.mailFolder'."
    )


def test_wrong_method_is_405(call: Call) -> None:
    """DELETE on users/{id} (served for GET only): 405."""
    response = call("DELETE", f"users/{ALICE}")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "Request_BadRequest"


def test_other_version_is_400(graph: GraphEmulator, call: Call) -> None:
    """Only /v1.0 is served: /beta is 400 Invalid version."""
    url = graph.url.removesuffix("/v1.0") + "/beta/users/" + ALICE
    response = call("GET", url)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "Invalid version: beta"


def test_bad_json_body_is_400(call: Call) -> None:
    """A POST body that is not JSON: 400 BadRequest."""
    response = call(
        "POST",
        f"{INBOX}/childFolders",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"


def test_body_over_the_limit_is_413_unread(graph: GraphEmulator, call: Call) -> None:
    """A declared body over max_request_bytes is refused before it is read (413, closed)."""
    response = call(
        "POST",
        f"{INBOX}/childFolders",
        content=b"x" * (graph.max_request_bytes + 1),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert graph.request_log[-1].status == 413


def test_errors_are_logged_with_their_code(graph: GraphEmulator, call: Call) -> None:
    """The request log keeps the error code and the request id the client saw."""
    response = call("GET", "users/nobody@contoso.com/mailFolders")
    record = graph.request_log[-1]
    assert (record.status, record.error_code) == (404, "ErrorInvalidUser")
    assert record.request_id == response.headers["request-id"]
