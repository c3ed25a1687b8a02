"""Injected faults (graph/faults.py; issue 12, point 7), each surfacing over HTTPS as its
documented answer and recorded in the request log with its status and error code."""

from __future__ import annotations

import re
import time

import httpx
import pytest

from ews_listener_emulators.graph.faults import GraphFaults
from ews_listener_emulators.graph.server import GraphEmulator
from tests.graph_emulator.conftest import (
    ALICE,
    BOB,
    GRAPH_SCOPE,
    SECRET,
    TENANT,
    Call,
    World,
)

INBOX = f"users/{ALICE}/mailFolders/inbox"
DELTA = f"{INBOX}/messages/delta"
RETRY_AFTER = re.compile(r"^\d+\.\d{3}$")
REVOKED_APP = "44444444-2222-3333-4444-555555555555"  # only test_token_revoked uses it


@pytest.mark.parametrize(
    ("kind", "status", "code", "retry_after"),
    [
        ("throttled", 429, "ApplicationThrottled", True),
        ("mailbox_concurrency", 429, "ApplicationThrottled", True),
        ("http_500", 500, "generalException", False),
        ("http_502", 502, "BadGateway", False),
        ("http_503", 503, "serviceNotAvailable", True),
        ("http_504", 504, "timeout", True),
    ],
)
def test_error_faults(
    graph: GraphEmulator, call: Call, kind: str, status: int, code: str, retry_after: bool
) -> None:
    """Each error kind answers its status and ODataError code (Retry-After on 429/503/504), once;
    the request log records both."""
    graph.faults.add(kind, mailbox=ALICE, retry_after=2.128)
    response = call("GET", INBOX)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert response.json()["error"]["innerError"]["request-id"] == response.headers["request-id"]
    if retry_after:
        assert response.headers["Retry-After"] == "2.128"
    else:
        assert "Retry-After" not in response.headers
    assert call("GET", INBOX).status_code == 200
    record = graph.request_log[-2]
    assert (record.status, record.error_code, record.mailbox) == (status, code, ALICE)
    assert record.operation == graph.request_log[-1].operation
    assert graph.faults.counters() == {kind: 1}


def test_scoped_by_operation_and_mailbox(graph: GraphEmulator, call: Call) -> None:
    """A rule for one operation and mailbox leaves other operations and mailboxes alone."""
    call("GET", f"{INBOX}/messages")
    operation = graph.request_log[-1].operation
    assert operation is not None
    graph.faults.add("http_503", operation=operation, mailbox=ALICE, count=2)
    assert call("GET", INBOX).status_code == 200
    assert call("GET", f"users/{BOB}/mailFolders/inbox/messages").status_code == 200
    assert call("GET", f"{INBOX}/messages").status_code == 503
    assert call("GET", f"{INBOX}/messages").status_code == 503
    assert call("GET", f"{INBOX}/messages").status_code == 200
    assert graph.faults.rules() == []


def test_probability_is_seeded(graph: GraphEmulator, call: Call) -> None:
    """The same seed and request sequence inject the same faults."""

    def run() -> list[int]:
        graph.faults.reset()
        graph.faults.add("http_500", probability=0.5)
        return [call("GET", INBOX).status_code for _ in range(16)]

    first = run()
    assert set(first) == {200, 500}
    assert run() == first
    assert graph.faults.counters() == {"http_500": first.count(500)}


def test_latency(graph: GraphEmulator, call: Call) -> None:
    """A latency fault delays a normal answer, and adds to a fault that fires with it."""
    graph.faults.add("latency", delay=0.2)
    started = time.perf_counter()
    assert call("GET", INBOX).status_code == 200
    assert time.perf_counter() - started >= 0.2
    graph.faults.add("latency", delay=0.2)
    graph.faults.add("http_503")
    started = time.perf_counter()
    assert call("GET", INBOX).status_code == 503
    assert time.perf_counter() - started >= 0.2
    assert graph.faults.counters() == {"latency": 2, "http_503": 1}


def test_drop_before_the_answer(graph: GraphEmulator, call: Call) -> None:
    """The connection closes without a status line; logged as status 0, ConnectionDropped."""
    graph.faults.add("drop", mailbox=ALICE)
    with pytest.raises(httpx.TransportError):
        call("GET", INBOX)
    record = graph.request_log[-1]
    assert (record.status, record.error_code, record.mailbox) == (0, "ConnectionDropped", ALICE)
    assert call("GET", INBOX).status_code == 200  # the client reconnects


def test_drop_in_the_middle_of_the_answer(graph: GraphEmulator, call: Call) -> None:
    """The status line and part of the body go out, then the connection closes."""
    graph.faults.add("drop", mailbox=ALICE, after_bytes=20)
    with pytest.raises(httpx.TransportError):
        call("GET", INBOX)
    record = graph.request_log[-1]
    assert (record.status, record.error_code) == (200, "ConnectionDropped")
    assert call("GET", INBOX).status_code == 200


def test_delta_token_invalidated(graph: GraphEmulator, call: Call) -> None:
    """The documented 410 syncStateNotFound with a Location to start over; only delta requests
    are hit by the rule (a GET of the folder is not)."""
    link = call("GET", DELTA).json()["@odata.deltaLink"]
    graph.faults.add("delta_token_invalidated", mailbox=ALICE)
    assert call("GET", INBOX).status_code == 200
    response = call("GET", link)
    assert response.status_code == 410
    assert response.json()["error"]["code"] == "syncStateNotFound"
    assert "$deltatoken=" in response.headers["Location"]
    assert graph.request_log[-1].error_code == "syncStateNotFound"
    assert call("GET", link).status_code == 200  # the rule is spent, the token was fine


def test_token_revoked(world: World, graph: GraphEmulator, call: Call, http: httpx.Client) -> None:
    """The app's tokens are revoked at the token server: this request and the next with the same
    token are 401 InvalidAuthenticationToken; a new token works."""
    world.token_server.register_app(TENANT, REVOKED_APP, secret=SECRET)

    def new_token() -> str:
        response = http.post(
            world.token_server.token_endpoint(TENANT),
            data={
                "grant_type": "client_credentials",
                "client_id": REVOKED_APP,
                "client_secret": SECRET,
                "scope": GRAPH_SCOPE,
            },
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    old = new_token()
    graph.faults.add("token_revoked", mailbox=ALICE)
    for _ in range(2):
        response = call("GET", INBOX, bearer=old)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "InvalidAuthenticationToken"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert call("GET", INBOX, bearer=new_token()).status_code == 200
    assert graph.faults.counters() == {"token_revoked": 1}


def test_hooks_for_subscriptions(graph: GraphEmulator, call: Call) -> None:
    """subscription_removed / notifications_missed are taken by the subscriptions resource, per
    mailbox, never by the request path."""
    graph.faults.add("subscription_removed", mailbox=ALICE)
    graph.faults.add("notifications_missed", count=2)
    assert call("GET", INBOX).status_code == 200
    assert graph.faults.take("subscription_removed", BOB) is False
    assert graph.faults.take("subscription_removed", ALICE) is True
    assert graph.faults.take("subscription_removed", ALICE) is False
    assert [graph.faults.take("notifications_missed", BOB) for _ in range(3)] == [
        True,
        True,
        False,
    ]
    assert graph.faults.counters() == {"subscription_removed": 1, "notifications_missed": 2}


@pytest.mark.parametrize(
    ("args", "params", "problem"),
    [
        (("nope",), {}, "unknown fault kind"),
        (("http_500",), {"count": 1, "probability": 0.5}, "not both"),
        (("http_500",), {"probability": 0.0}, "probability"),
        (("http_500",), {"count": 0}, "count"),
        (("latency",), {"seconds": 1}, "unknown fault parameters"),
    ],
)
def test_bad_rules_are_refused(args: tuple[str], params: dict[str, object], problem: str) -> None:
    """A rule that cannot fire as meant is a ValueError naming the problem."""
    with pytest.raises(ValueError, match=problem):
        GraphFaults().add(*args, **params)  # type: ignore[arg-type]
