"""``POST /v1.0/$batch`` (graph/batch.py) as json-batching.md documents it
(../shared/graph-samples/batch-mixed-statuses.http.txt, batch-dependson.request.http.txt): one 200
holding a status per request, ``dependsOn`` and 424, at most 20 requests, and each request
authenticated, throttled, faulted, validated and logged on its own."""

from __future__ import annotations

import base64
import os
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from ews_listener_emulators.graph._ids import to_rest_id
from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.server import EwsEmulator
from tests.graph_emulator.conftest import ALICE, BOB, SCOPED_ID, Call
from tests.graph_emulator.direct import sample, samples_available

INBOX = f"users/{ALICE}/mailFolders/inbox"
# Without ../shared/graph-samples this skips elsewhere and fails in CI (which always has them).
needs_samples = pytest.mark.skipif(
    not samples_available() and not os.environ.get("CI"), reason="../shared/graph-samples"
)


def mime(subject: str) -> bytes:
    message = EmailMessage()
    message["From"] = "Dana Swope <dana@example.com>"
    message["To"] = ALICE
    message["Subject"] = subject
    message.set_content("Hello.")
    return message.as_bytes()


def batch(call: Call, requests: list[dict[str, Any]], **options: Any) -> httpx.Response:
    return call("POST", "$batch", json={"requests": requests}, **options)


def by_id(response: httpx.Response) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200
    return {r["id"]: r for r in response.json()["responses"]}


def test_mixed_outcomes(graph: GraphEmulator, ews: EwsEmulator, call: Call) -> None:
    """200, 403 (outside the app's scope), 404, 429 (a fault on one request) and a PATCH with a
    JSON body, in one 200; responses in request order, each with status, headers and body."""
    graph.allow(SCOPED_ID, [ALICE])
    rest = to_rest_id(ews.deliver(ALICE, mime("batched")))
    call("GET", f"users/{ALICE}/messages/{rest}")
    get_message = graph.request_log[-1].operation
    assert get_message is not None
    graph.faults.add("throttled", operation=get_message, mailbox=ALICE, retry_after=2.128)
    response = batch(
        call,
        [
            {"id": "1", "method": "GET", "url": f"/{INBOX}"},
            {"id": "2", "method": "GET", "url": f"/users/{BOB}/mailFolders/inbox"},
            {"id": "3", "method": "GET", "url": "/users/nobody@contoso.com/mailFolders"},
            {"id": "4", "method": "GET", "url": f"/users/{ALICE}/messages/{rest}"},
            {
                "id": "5",
                "method": "PATCH",
                "url": f"users/{ALICE}/messages/{rest}?$select=isRead",
                "headers": {"Content-Type": "application/json"},
                "body": {"isRead": True},
            },
        ],
        client_id=SCOPED_ID,
    )
    assert [r["id"] for r in response.json()["responses"]] == ["1", "2", "3", "4", "5"]
    answers = by_id(response)
    assert {i: a["status"] for i, a in answers.items()} == {
        "1": 200,
        "2": 403,
        "3": 404,
        "4": 429,
        "5": 200,
    }
    assert answers["1"]["body"]["displayName"] == "Inbox"
    assert answers["1"]["headers"]["Content-Type"].startswith("application/json")
    assert answers["2"]["body"]["error"]["code"] == "ErrorAccessDenied"
    assert answers["3"]["body"]["error"]["code"] == "ErrorInvalidUser"
    throttled = answers["4"]
    assert throttled["headers"]["Retry-After"] == "2.128"
    assert throttled["body"]["error"]["code"] == "ApplicationThrottled"
    assert answers["5"]["body"]["isRead"] is True
    logged = [(r.operation, r.status) for r in graph.request_log][-6:]
    assert logged[-1] == ("$batch", 200)
    assert [status for _, status in logged[:-1]] == [200, 403, 404, 429, 200]


def test_depends_on_order_and_424(graph: GraphEmulator, call: Call) -> None:
    """Requests run after what they depend on (a later one first if named); one whose
    dependency failed is not run and answers 424, and so do the ones depending on it."""
    response = batch(
        call,
        [
            {"id": "1", "method": "GET", "url": f"{INBOX}", "dependsOn": ["4"]},
            {"id": "2", "method": "GET", "url": f"{INBOX}/nonsense", "dependsOn": ["1"]},
            {"id": "3", "method": "GET", "url": f"{INBOX}", "dependsOn": ["2"]},
            {"id": "4", "method": "GET", "url": f"users/{BOB}/mailFolders/inbox"},
            {"id": "5", "method": "GET", "url": f"{INBOX}", "dependsOn": ["3"]},
        ],
    )
    answers = by_id(response)
    assert {i: a["status"] for i, a in answers.items()} == {
        "1": 200,
        "2": 400,
        "3": 424,
        "4": 200,
        "5": 424,
    }
    assert answers["3"]["body"]["error"]["code"] == "FailedDependency"
    ran = [(r.mailbox, r.status) for r in graph.request_log if r.operation != "$batch"]
    assert ran == [(BOB, 200), (ALICE, 200), (None, 400)]  # 4, 1, 2; neither 3 nor 5


def test_twenty_requests_at_most(call: Call) -> None:
    """20 requests are served; 21 are a 400 for the whole batch."""
    request = {"method": "GET", "url": INBOX}
    twenty = batch(call, [{"id": str(i), **request} for i in range(20)])
    assert [r["status"] for r in twenty.json()["responses"]] == [200] * 20
    response = batch(call, [{"id": str(i), **request} for i in range(21)])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"
    assert "20" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "requests",
    [
        [],
        [{"id": "1", "method": "GET"}],
        [{"id": "1", "method": "GET", "url": INBOX}, {"id": "1", "method": "GET", "url": INBOX}],
        [{"id": "1", "method": "GET", "url": INBOX, "dependsOn": ["9"]}],
        [
            {"id": "1", "method": "GET", "url": INBOX, "dependsOn": ["2"]},
            {"id": "2", "method": "GET", "url": INBOX, "dependsOn": ["1"]},
        ],
        [{"id": "1", "method": "POST", "url": "$batch", "body": {}, "headers": {}}],
    ],
    ids=["empty", "no-url", "repeated-id", "unknown-dependency", "cycle", "nested"],
)
def test_bad_batches(call: Call, requests: list[dict[str, Any]]) -> None:
    """A batch that cannot be run as written is a 400 for the whole of it (a nested batch: for
    its request)."""
    response = batch(call, requests)
    if response.status_code == 200:  # nested: the inner batch is refused, the outer answers
        [inner] = response.json()["responses"]
        assert inner["status"] == 400
        return
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"


def test_body_without_content_type(call: Call) -> None:
    """A request with a body and no Content-Type header is refused on its own."""
    request = {"id": "1", "method": "PATCH", "url": INBOX, "body": {"displayName": "x"}}
    [answer] = batch(call, [request]).json()["responses"]
    assert answer["status"] == 400


def test_outer_token_authenticates_every_request(call: Call) -> None:
    """Without a valid token the batch itself is 401; a token in a request's headers is not
    used (the batch's is)."""
    request = {"id": "1", "method": "GET", "url": INBOX, "headers": {"Authorization": "Bearer x"}}
    assert batch(call, [request], bearer="nope").status_code == 401
    [answer] = batch(call, [request]).json()["responses"]
    assert answer["status"] == 200


def test_raw_bodies_are_base64(ews: EwsEmulator, call: Call) -> None:
    """A non-JSON answer ($value, the MIME) is given base64-encoded."""
    raw = mime("mime in a batch")
    rest = to_rest_id(ews.deliver(ALICE, raw))
    request = {"id": "1", "method": "GET", "url": f"users/{ALICE}/messages/{rest}/$value"}
    [answer] = batch(call, [request]).json()["responses"]
    assert answer["status"] == 200
    assert b"mime in a batch" in base64.b64decode(answer["body"])


def test_drop_inside_drops_the_batch(graph: GraphEmulator, call: Call) -> None:
    """A dropped-connection fault on one request breaks the batch's connection."""
    graph.faults.add("drop", mailbox=BOB)
    requests = [
        {"id": "1", "method": "GET", "url": INBOX},
        {"id": "2", "method": "GET", "url": f"users/{BOB}/mailFolders/inbox"},
    ]
    with pytest.raises(httpx.TransportError):
        batch(call, requests)
    assert [(r.operation, r.status) for r in graph.request_log][-1] == ("$batch", 0)
    assert by_id(batch(call, requests))["2"]["status"] == 200


def test_batch_is_post_only(call: Call) -> None:
    """GET $batch: 405."""
    assert call("GET", "$batch").status_code == 405


@needs_samples
def test_batch_has_the_documented_shape(call: Call) -> None:
    """Each response has the members of batch-mixed-statuses.http.txt's (id, status, headers,
    body), a string id, an integer status and a Content-Type header, success or error."""
    documented = sample("batch-mixed-statuses.http.txt")["responses"]
    members = {frozenset(r) for r in documented}
    assert members == {frozenset({"id", "status", "headers", "body"})}
    requests = [
        {"id": "1", "method": "GET", "url": INBOX},
        {"id": "2", "method": "PUT", "url": INBOX},  # 405, as the sample's request 4
    ]
    responses = batch(call, requests).json()["responses"]
    assert [r["status"] for r in responses] == [200, 405]
    for response in responses:
        assert frozenset(response) in members
        assert isinstance(response["id"], str)
        assert isinstance(response["status"], int)
        assert "Content-Type" in response["headers"]
    assert responses[1]["body"]["error"]["code"] == documented[3]["body"]["error"]["code"]
