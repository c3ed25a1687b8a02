"""Change notifications over HTTPS (issue 12, point 6): the validationToken handshake against a
real receiver on 127.0.0.1, the subscription resource, notifications for mail delivered or changed
through either protocol, retries, expiry and lifecycle notifications.

Every delay is a ``NotificationSettings`` field set near zero here; tests wait only by polling
the receiver with a deadline.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.graph.subscriptions import (
    CHANGE_NOTIFICATIONS_SCHEMA,
    NotificationSettings,
)
from ews_listener_emulators.server import EwsEmulator
from tests.emulator.conftest import simple_mime
from tests.graph_emulator.conftest import (
    ALICE,
    BOB,
    NOROLE_ID,
    SCOPED_ID,
    SECRET,
    TENANT,
    Call,
    World,
)
from tests.graph_emulator.direct import SAMPLES_DIR, samples_available

# Without ../shared/graph-samples this skips elsewhere and fails in CI (which always has them).
needs_samples = pytest.mark.skipif(
    not samples_available() and not os.environ.get("CI"), reason="../shared/graph-samples"
)
FAST = NotificationSettings(
    validation_timeout=0.5,
    delivery_timeout=0.3,
    first_retry=0.02,
    max_retry=0.1,
    retry_for=30.0,
    reauthorize_before=0.0,
    tick=0.01,
)


@dataclass
class Receiver:
    """A webhook receiver: echoes validation tokens (or misbehaves as told), records the rest."""

    url: str = ""
    validation: str = "echo"  # echo | wrong | slow | 500
    fail_next: int = 0  # answer this many notifications to /notify with 500
    fail_lifecycle: int = 0  # answer this many to /lifecycle with 500
    slow_next: int = 0  # answer this many notifications too late
    delay: float = 1.0  # how late "slow" is
    holding: threading.Event = field(default_factory=threading.Event)  # a POST to /hold waits
    release: threading.Event = field(default_factory=threading.Event)  # ends a POST to /hold
    validations: list[tuple[str, str]] = field(default_factory=list)  # (token, content type)
    posts: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)  # path, status, body
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self, path: str = "/notify", status: int = 202) -> list[dict[str, Any]]:
        """The value[] entries POSTed to ``path`` and answered with ``status``."""
        with self.lock:
            return [
                e for p, s, body in self.posts if p == path and s == status for e in body["value"]
            ]

    def wait(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.01)
        raise AssertionError(f"not seen within {timeout}s; posts: {self.posts}")


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            tokens = parse_qs(url.query).get("validationToken")
            if tokens:
                self._validate(tokens[0])
                return
            if url.path == "/hold":
                receiver.holding.set()
                receiver.release.wait(10)  # a receiver that answers when the test lets it
            with receiver.lock:
                status = 202
                if receiver.fail_next and url.path == "/notify":
                    receiver.fail_next -= 1
                    status = 500
                elif receiver.fail_lifecycle and url.path == "/lifecycle":
                    receiver.fail_lifecycle -= 1
                    status = 500
                slow = status == 202 and receiver.slow_next > 0
                if slow:
                    receiver.slow_next -= 1
                receiver.posts.append((url.path, 500 if slow else status, json.loads(data)))
            if slow:
                time.sleep(receiver.delay)
            self._answer(status, b"", "text/plain")

        def _validate(self, token: str) -> None:
            with receiver.lock:
                receiver.validations.append((token, self.headers.get("Content-Type", "")))
            mode = receiver.validation
            if mode == "slow":
                time.sleep(receiver.delay)
            if mode == "500":
                self._answer(500, b"", "text/plain")
            else:
                body = token if mode != "wrong" else token[::-1]
                self._answer(200, body.encode(), "text/plain; charset=utf-8")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:  # the emulator gave up waiting
                pass

    return Handler


def _serve(context: ssl.SSLContext | None) -> Iterator[Receiver]:
    state = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    scheme = "https" if context is not None else "http"
    state.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A plain-HTTP receiver on 127.0.0.1 (the emulator accepts http on loopback)."""
    yield from _serve(None)


@pytest.fixture
def https_receiver(world: World) -> Iterator[Receiver]:
    """An HTTPS receiver with a certificate from the emulator CA."""
    yield from _serve(world.ca.server_context())


@pytest.fixture
def subs(graph: GraphEmulator) -> Iterator[GraphEmulator]:
    """The Graph emulator with near-zero notification delays; subscriptions cleared after."""
    saved = graph.subscriptions.settings
    graph.subscriptions.settings = FAST
    yield graph
    graph.subscriptions.clear()
    graph.subscriptions.settings = saved
    problems = [d for d in graph.subscriptions.deliveries if d.schema_error]
    assert problems == [], problems


def _in(minutes: float) -> str:
    return (datetime.now(UTC) + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def _create(call: Call, receiver: Receiver, **fields: Any) -> httpx.Response:
    body = {
        "changeType": "created",
        "notificationUrl": f"{receiver.url}/notify",
        "resource": f"users/{ALICE}/mailFolders('inbox')/messages",
        "expirationDateTime": _in(60),
        "clientState": "secretClientValue",
        **fields,
    }
    return call("POST", "subscriptions", json=body)


def _subscribe(call: Call, receiver: Receiver, **fields: Any) -> dict[str, Any]:
    response = _create(call, receiver, **fields)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _barrier(call: Call, receiver: Receiver) -> None:
    """Subscribe Bob's inbox to /barrier: once mail delivered to Bob after Alice's is notified
    there, the delivery thread has been through Alice's event too (no sleeping)."""
    _subscribe(
        call,
        receiver,
        notificationUrl=f"{receiver.url}/barrier",
        resource=f"users/{BOB}/mailFolders('inbox')/messages",
    )


def _check_payload(graph: GraphEmulator, entries: list[dict[str, Any]]) -> None:
    if graph.schema is not None:
        problem = graph.schema.validate({"value": entries}, CHANGE_NOTIFICATIONS_SCHEMA)
        assert problem is None, problem


# --- the handshake and the resource ----------------------------------------------------------


def test_create_validates_the_url_then_answers_201(
    subs: GraphEmulator, call: Call, receiver: Receiver
) -> None:
    """The receiver gets a text/plain POST with a validationToken (URL-decoded by it) before the
    201, which carries the subscription as subscription-create.http.txt shows it."""
    body = _subscribe(call, receiver)
    [(token, content_type)] = receiver.validations
    assert token.startswith("Validation: ")
    assert content_type.startswith("text/plain")
    assert body["@odata.context"] == f"{subs.url}/$metadata#subscriptions/$entity"
    uuid.UUID(body["id"])
    assert body["changeType"] == "created"
    assert body["clientState"] == "secretClientValue"
    assert body["resource"] == f"users/{ALICE}/mailFolders('inbox')/messages"
    assert body["notificationUrl"] == f"{receiver.url}/notify"
    assert body["latestSupportedTlsVersion"] == "v1_2"


def test_both_urls_are_validated(subs: GraphEmulator, call: Call, receiver: Receiver) -> None:
    """With a lifecycleNotificationUrl both URLs get a validation request."""
    _subscribe(call, receiver, lifecycleNotificationUrl=f"{receiver.url}/lifecycle")
    assert len(receiver.validations) == 2


@pytest.mark.parametrize("mode", ["wrong", "slow", "500"])
def test_a_failed_handshake_is_400_and_no_subscription(
    subs: GraphEmulator, call: Call, receiver: Receiver, mode: str
) -> None:
    """A wrong token, an answer after validation_timeout, or a 500: 400, nothing created."""
    receiver.validation = mode
    response = _create(call, receiver)
    assert response.status_code == 400, response.text
    assert "validation request failed" in response.json()["error"]["message"]
    assert call("GET", "subscriptions").json()["value"] == []


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"notificationUrl": "http://example.com/notify"}, "InvalidRequest"),
        ({"changeType": "created,moved"}, "InvalidRequest"),
        ({"resource": f"users/{ALICE}/events"}, "InvalidRequest"),
        ({"resource": "me/messages"}, "InvalidRequest"),
        # Minutes from now, turned into a time when the test runs (not when it is collected:
        # the full suite collects minutes before it gets here).
        ({"expirationDateTime": -1}, "InvalidRequest"),
        ({"expirationDateTime": 10080 + 5}, "ExtensionError"),
    ],
)
def test_bad_subscriptions_are_400(
    subs: GraphEmulator, call: Call, receiver: Receiver, fields: dict[str, object], code: str
) -> None:
    """http off loopback, an unknown change type or resource, /me with an app token, an
    expiration in the past or past 10080 minutes: 400."""
    given = {k: _in(v) if isinstance(v, int) else v for k, v in fields.items()}
    response = _create(call, receiver, **given)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == code


def test_expiration_up_to_the_maximum_is_accepted(
    subs: GraphEmulator, call: Call, receiver: Receiver
) -> None:
    """Just under 10080 minutes (7 days) ahead is allowed, for the mailbox and for a folder id."""
    _subscribe(call, receiver, expirationDateTime=_in(10080 - 1))
    _subscribe(call, receiver, resource=f"/users/{ALICE}/messages")


def test_list_get_renew_reauthorize_delete(
    subs: GraphEmulator, call: Call, receiver: Receiver
) -> None:
    """GET lists and gets it, PATCH renews expirationDateTime (200), reauthorize is 204, DELETE
    is 204 and then GET is 404."""
    sub = _subscribe(call, receiver)
    listed = call("GET", "subscriptions")
    assert [s["id"] for s in listed.json()["value"]] == [sub["id"]]
    assert call("GET", f"subscriptions/{sub['id']}").json()["id"] == sub["id"]
    later = _in(120)
    renewed = call("PATCH", f"subscriptions/{sub['id']}", json={"expirationDateTime": later})
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["expirationDateTime"][:19] == later[:19]
    too_far = call(
        "PATCH", f"subscriptions/{sub['id']}", json={"expirationDateTime": _in(10080 + 5)}
    )
    assert too_far.status_code == 400
    assert call("POST", f"subscriptions/{sub['id']}/reauthorize").status_code == 204
    assert call("DELETE", f"subscriptions/{sub['id']}").status_code == 204
    assert call("GET", f"subscriptions/{sub['id']}").status_code == 404


def test_role_and_mailbox_scope_apply(subs: GraphEmulator, call: Call, receiver: Receiver) -> None:
    """No Mail.* role: 403; an app scoped to Alice subscribing to Bob's inbox: 403; another
    app's subscription is 404."""
    subs.allow(SCOPED_ID, [ALICE])
    body = {
        "changeType": "created",
        "notificationUrl": f"{receiver.url}/notify",
        "resource": f"users/{BOB}/mailFolders('inbox')/messages",
        "expirationDateTime": _in(60),
    }
    denied = call("POST", "subscriptions", json=body, client_id=NOROLE_ID)
    assert denied.status_code == 403
    scoped = call("POST", "subscriptions", json=body, client_id=SCOPED_ID)
    assert scoped.status_code == 403
    assert scoped.json()["error"]["code"] == "ErrorAccessDenied"
    sub = _subscribe(call, receiver)
    assert call("GET", f"subscriptions/{sub['id']}", client_id=SCOPED_ID).status_code == 404


# --- notifications ---------------------------------------------------------------------------


def test_mail_delivered_through_ews_notifies(
    subs: GraphEmulator, ews: EwsEmulator, call: Call, receiver: Receiver
) -> None:
    """deliver() through the EWS emulator: one changeNotificationCollection with the message's
    Graph id, its etag and the clientState, valid under the OpenAPI description."""
    sub = _subscribe(call, receiver)
    ews.deliver(ALICE, simple_mime("hello"))
    [entry] = receiver.wait(receiver.received)
    [message] = call("GET", f"users/{ALICE}/mailFolders/inbox/messages").json()["value"]
    assert entry["subscriptionId"] == sub["id"]
    assert entry["changeType"] == "created"
    assert entry["clientState"] == "secretClientValue"
    assert entry["resourceData"]["id"] == message["id"]
    assert entry["resourceData"]["@odata.etag"] == message["@odata.etag"]
    assert entry["resourceData"]["@odata.type"] == "#Microsoft.Graph.Message"
    assert entry["resource"].startswith("users/")
    assert entry["resource"].endswith(f"/messages/{message['id']}")  # as Graph's sample writes it
    assert entry["resourceData"]["@odata.id"].endswith(f"/Messages/{message['id']}")
    _check_payload(subs, [entry])


def test_changes_are_batched_and_filtered_by_change_type(
    subs: GraphEmulator, ews: EwsEmulator, call: Call, receiver: Receiver
) -> None:
    """A PATCH through Graph is "updated", a delete "deleted"; a subscription to created only
    hears of neither; mail to another folder notifies nobody."""
    _subscribe(call, receiver, changeType="created,updated,deleted")
    created_only = _subscribe(call, receiver, notificationUrl=f"{receiver.url}/created")
    ews.deliver(ALICE, simple_mime("one"))
    ews.deliver(ALICE, simple_mime("junk"), folder="junkemail")
    receiver.wait(receiver.received)
    [message] = call("GET", f"users/{ALICE}/mailFolders/inbox/messages").json()["value"]
    path = f"users/{ALICE}/messages/{message['id']}"
    assert call("PATCH", path, json={"isRead": True}).status_code == 200
    assert call("DELETE", path).status_code == 204
    entries = receiver.wait(lambda: (e := receiver.received()) and len(e) >= 3 and e)
    assert [e["changeType"] for e in entries] == ["created", "updated", "deleted"]
    _check_payload(subs, entries)
    created = receiver.received("/created")
    assert [e["subscriptionId"] for e in created] == [created_only["id"]]


def test_a_failing_receiver_gets_retries_until_it_recovers(
    subs: GraphEmulator, ews: EwsEmulator, call: Call, receiver: Receiver
) -> None:
    """Two 500s and one answer slower than delivery_timeout, then 202: the same notification is
    sent four times, and delivered once."""
    _subscribe(call, receiver)
    receiver.fail_next, receiver.slow_next, receiver.delay = 2, 1, 0.5
    ews.deliver(ALICE, simple_mime("retry me"))
    [entry] = receiver.wait(receiver.received)
    with receiver.lock:
        attempts = [s for p, s, _ in receiver.posts if p == "/notify"]
    assert attempts == [500, 500, 500, 202]
    failed = [d for d in subs.subscriptions.deliveries if d.kind == "notification" and not d.status]
    assert len(failed) >= 1  # the slow one counts as failed
    assert entry["changeType"] == "created"


def test_notifications_dropped_after_the_retry_window_send_missed(
    subs: GraphEmulator, ews: EwsEmulator, call: Call, receiver: Receiver
) -> None:
    """A receiver that keeps failing past retry_for: the notifications are dropped and the
    lifecycle URL hears ``missed``."""
    subs.subscriptions.settings = replace(FAST, retry_for=0.1)
    sub = _subscribe(call, receiver, lifecycleNotificationUrl=f"{receiver.url}/lifecycle")
    receiver.fail_next = 1000
    ews.deliver(ALICE, simple_mime("lost"))
    [event] = receiver.wait(lambda: receiver.received("/lifecycle"))
    assert event["lifecycleEvent"] == "missed"
    assert event["subscriptionId"] == sub["id"]


def test_an_expired_subscription_sends_nothing_and_is_gone(
    subs: GraphEmulator, ews: EwsEmulator, call: Call, receiver: Receiver
) -> None:
    """Past its expirationDateTime a subscription is 404 and mail notifies nobody."""
    sub = _subscribe(call, receiver, expirationDateTime=_in(0.5 / 60))
    receiver.wait(lambda: call("GET", f"subscriptions/{sub['id']}").status_code == 404, timeout=5)
    _barrier(call, receiver)
    ews.deliver(ALICE, simple_mime("too late"))
    ews.deliver(BOB, simple_mime("barrier"))
    receiver.wait(lambda: receiver.received("/barrier"))
    assert receiver.received() == []


# --- lifecycle notifications -----------------------------------------------------------------


def test_lifecycle_notifications(subs: GraphEmulator, call: Call, receiver: Receiver) -> None:
    """``missed`` and ``subscriptionRemoved`` (Python API, as the fault rules use), in the
    shape of webhook-lifecycle-notification.http.txt."""
    sub = _subscribe(call, receiver, lifecycleNotificationUrl=f"{receiver.url}/lifecycle")
    subs.subscriptions.miss(sub["id"])
    subs.subscriptions.remove(sub["id"])
    events = receiver.wait(lambda: (e := receiver.received("/lifecycle")) and len(e) == 2 and e)
    assert [e["lifecycleEvent"] for e in events] == ["missed", "subscriptionRemoved"]
    assert all(e["clientState"] == "secretClientValue" for e in events)
    _check_payload(subs, events)
    assert call("GET", f"subscriptions/{sub['id']}").status_code == 404


def _own_app(world: World, http: httpx.Client) -> tuple[str, Callable[[], str]]:
    """An app of its own (revoking it spoils no cached token) and how to get a new Graph token
    for it."""
    client_id = str(uuid.uuid4())
    world.token_server.register_app(TENANT, client_id, secret=SECRET)

    def fresh() -> str:
        response = http.post(
            world.token_server.token_endpoint(TENANT),
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": SECRET,
                "scope": "https://graph.microsoft.com/.default",
            },
        )
        token: str = response.json()["access_token"]
        return token

    return client_id, fresh


def _lifecycle_body(receiver: Receiver) -> dict[str, Any]:
    return {
        "changeType": "created",
        "notificationUrl": f"{receiver.url}/notify",
        "lifecycleNotificationUrl": f"{receiver.url}/lifecycle",
        "resource": f"users/{ALICE}/mailFolders('inbox')/messages",
        "expirationDateTime": _in(60),
    }


def test_no_change_notification_follows_a_revocation_within_a_tick(
    subs: GraphEmulator,
    world: World,
    ews: EwsEmulator,
    call: Call,
    http: httpx.Client,
    receiver: Receiver,
) -> None:
    """Tokens and expiry are checked once a ``tick``, not on every round a change wakes, but at
    once after a revocation: mail that comes right after it is not notified (with a tick of a
    minute, only the revocation can have made the round check)."""
    subs.subscriptions.settings = replace(FAST, tick=60.0)
    client_id, fresh = _own_app(world, http)
    created = call("POST", "subscriptions", json=_lifecycle_body(receiver), bearer=fresh())
    assert created.status_code == 201, created.text
    _barrier(call, receiver)
    world.token_server.revoke(client_id)
    ews.deliver(ALICE, simple_mime("after the revocation"))
    ews.deliver(BOB, simple_mime("barrier"))
    receiver.wait(lambda: receiver.received("/barrier"))
    assert receiver.received() == []
    [event] = receiver.wait(lambda: receiver.received("/lifecycle"))
    assert event["lifecycleEvent"] == "reauthorizationRequired"


def test_revoked_token_asks_for_reauthorization(
    subs: GraphEmulator,
    world: World,
    ews: EwsEmulator,
    call: Call,
    http: httpx.Client,
    receiver: Receiver,
) -> None:
    """When the token server revokes the app's tokens: ``reauthorizationRequired``, and change
    notifications wait until POST reauthorize with a new token."""
    client_id, fresh = _own_app(world, http)
    created = call("POST", "subscriptions", json=_lifecycle_body(receiver), bearer=fresh())
    assert created.status_code == 201, created.text
    world.token_server.revoke(client_id)
    [event] = receiver.wait(lambda: receiver.received("/lifecycle"))
    assert event["lifecycleEvent"] == "reauthorizationRequired"
    _barrier(call, receiver)
    ews.deliver(ALICE, simple_mime("held"))
    ews.deliver(BOB, simple_mime("barrier"))
    receiver.wait(lambda: receiver.received("/barrier"))
    assert receiver.received() == []
    path = f"subscriptions/{created.json()['id']}/reauthorize"
    assert call("POST", path, bearer=fresh()).status_code == 204
    [entry] = receiver.wait(receiver.received)
    assert entry["changeType"] == "created"


def test_reauthorization_required_shortly_before_expiry(
    subs: GraphEmulator, call: Call, receiver: Receiver
) -> None:
    """reauthorize_before ahead of expirationDateTime: one ``reauthorizationRequired``; a renewal
    moves the deadline and asks again only near the new one."""
    subs.subscriptions.settings = replace(FAST, reauthorize_before=3600.0)
    sub = _subscribe(call, receiver, lifecycleNotificationUrl=f"{receiver.url}/lifecycle")
    [event] = receiver.wait(lambda: receiver.received("/lifecycle"))
    assert event["lifecycleEvent"] == "reauthorizationRequired"
    assert event["subscriptionId"] == sub["id"]


def test_fault_rules_replace_a_delivery_with_a_lifecycle_notification(
    subs: GraphEmulator, ews: EwsEmulator, call: Call, receiver: Receiver
) -> None:
    """``notifications_missed`` drops the next batch and sends ``missed``;
    ``subscription_removed`` removes the subscription and sends ``subscriptionRemoved``."""
    sub = _subscribe(call, receiver, lifecycleNotificationUrl=f"{receiver.url}/lifecycle")
    subs.faults.add("notifications_missed", mailbox=ALICE)
    ews.deliver(ALICE, simple_mime("dropped"))
    [missed] = receiver.wait(lambda: receiver.received("/lifecycle"))
    assert missed["lifecycleEvent"] == "missed"
    subs.faults.add("subscription_removed", mailbox=ALICE)
    ews.deliver(ALICE, simple_mime("removed"))
    events = receiver.wait(lambda: (e := receiver.received("/lifecycle")) and len(e) == 2 and e)
    assert events[1]["lifecycleEvent"] == "subscriptionRemoved"
    assert receiver.received() == []
    assert call("GET", f"subscriptions/{sub['id']}").status_code == 404


def test_changes_seen_together_go_in_one_post(
    subs: GraphEmulator, ews: EwsEmulator, call: Call, receiver: Receiver
) -> None:
    """Three messages delivered while the delivery thread waits for the store: one POST with
    three entries, as Graph batches the notifications of a subscription."""
    _subscribe(call, receiver)
    with subs.store.lock:  # the delivery thread collects events under this lock
        for n in range(3):
            ews.deliver(ALICE, simple_mime(f"batch {n}"))
    receiver.wait(lambda: len(receiver.received()) == 3)
    with receiver.lock:
        sizes = [len(body["value"]) for path, _, body in receiver.posts if path == "/notify"]
    assert sizes == [3]


def test_an_https_receiver_is_validated_and_notified(
    subs: GraphEmulator, ews: EwsEmulator, call: Call, https_receiver: Receiver
) -> None:
    """An https notificationUrl (the emulator trusts its own CA): handshake and notification."""
    _subscribe(call, https_receiver)
    ews.deliver(ALICE, simple_mime("over tls"))
    [entry] = https_receiver.wait(https_receiver.received)
    assert entry["changeType"] == "created"


def test_a_move_out_of_the_folder_is_deleted_there_and_immutable_ids_are_kept(
    subs: GraphEmulator, ews: EwsEmulator, call: Call, receiver: Receiver
) -> None:
    """Created with ``Prefer: IdType="ImmutableId"``: notifications name messages by immutable
    id; a move out of the inbox is "deleted" for an inbox subscription, with that same id."""
    immutable = {"Prefer": 'IdType="ImmutableId"'}
    body = {
        "changeType": "created,deleted",
        "notificationUrl": f"{receiver.url}/notify",
        "resource": f"users/{ALICE}/mailFolders('inbox')/messages",
        "expirationDateTime": _in(60),
    }
    assert call("POST", "subscriptions", json=body, headers=immutable).status_code == 201
    ews.deliver(ALICE, simple_mime("moving"))
    [created] = receiver.wait(receiver.received)
    listed = call("GET", f"users/{ALICE}/mailFolders/inbox/messages", headers=immutable)
    [message] = listed.json()["value"]
    assert created["resourceData"]["id"] == message["id"]
    moved = call(
        "POST",
        f"users/{ALICE}/messages/{message['id']}/move",
        json={"destinationId": "archive"},
        headers=immutable,
    )
    assert moved.status_code == 201, moved.text
    entries = receiver.wait(lambda: (e := receiver.received()) and len(e) == 2 and e)
    assert entries[1]["changeType"] == "deleted"
    assert entries[1]["resourceData"]["id"] == message["id"]
    _check_payload(subs, entries)


def test_lifecycle_notifications_are_retried(
    subs: GraphEmulator, call: Call, receiver: Receiver
) -> None:
    """A lifecycle receiver that fails twice gets the notification on the third attempt."""
    sub = _subscribe(call, receiver, lifecycleNotificationUrl=f"{receiver.url}/lifecycle")
    receiver.fail_lifecycle = 2
    subs.subscriptions.remove(sub["id"])
    [event] = receiver.wait(lambda: receiver.received("/lifecycle"))
    assert event["lifecycleEvent"] == "subscriptionRemoved"
    assert len(receiver.received("/lifecycle", status=500)) == 2


# --- Microsoft's documented shapes (../shared/graph-samples, read, never copied) -------------


def _documented(name: str, marker: str) -> Any:
    """The first JSON body after ``marker`` in a sample file (a line starting with ``{``: the
    request lines hold ``{id}`` placeholders)."""
    text = (SAMPLES_DIR / name).read_text(encoding="utf-8").split(marker, 1)[1]
    return json.loads(text[text.index("\n{") :])


@needs_samples
def test_documented_requests_and_shapes(
    subs: GraphEmulator, ews: EwsEmulator, call: Call, receiver: Receiver
) -> None:
    """The documented create-with-lifecycle-url and renew requests are accepted; the answer has
    every property of subscription-create's (but notificationContentType, not in v1.0), and the
    POSTed notifications have the keys of webhook-change-notification and
    webhook-lifecycle-notification."""
    request = _documented("subscription-create-with-lifecycle-url.request.http.txt", "### request")
    request["resource"] = request["resource"].replace("{id}", ALICE)
    request["notificationUrl"] = f"{receiver.url}/notify"
    request["lifecycleNotificationUrl"] = f"{receiver.url}/lifecycle"
    request["expirationDateTime"] = _in(60)
    created = call("POST", "subscriptions", json=request)
    assert created.status_code == 201, created.text
    answer = _documented("subscription-create.http.txt", "### response")
    assert set(answer) - {"notificationContentType"} <= set(created.json())
    renew = _documented("subscription-renew.request.http.txt", "### request")
    assert set(renew) == {"expirationDateTime"}
    path = f"subscriptions/{created.json()['id']}"
    assert call("PATCH", path, json={**renew, "expirationDateTime": _in(90)}).status_code == 200

    ews.deliver(ALICE, simple_mime("documented"))
    [entry] = receiver.wait(receiver.received)
    [documented] = _documented("webhook-change-notification.http.txt", "### body")["value"]
    assert set(entry) == set(documented)
    assert set(entry["resourceData"]) == set(documented["resourceData"])
    subs.subscriptions.remove(created.json()["id"])
    [event] = receiver.wait(lambda: receiver.received("/lifecycle"))
    [lifecycle] = _documented("webhook-lifecycle-notification.http.txt", "### body")["value"]
    assert set(event) == set(lifecycle)


def test_stop_ends_the_delivery_thread(world: World) -> None:
    """A Graph emulator of its own: start() starts the delivery thread, stop() ends it."""
    emulator = GraphEmulator(world.token_server, world.ca, notifications=FAST)
    assert not emulator.subscriptions.running
    with emulator:
        assert emulator.subscriptions.running
    assert not emulator.subscriptions.running


def test_an_unreachable_receiver_is_retried_with_back_off_then_notified(
    subs: GraphEmulator, ews: EwsEmulator, call: Call, receiver: Receiver
) -> None:
    """``receiver_unreachable`` fails the next deliveries (no answer); Graph's back-off retries,
    and the same notification arrives once the rule is spent."""
    subs.subscriptions.settings = replace(FAST, first_retry=0.05, max_retry=0.1)
    _subscribe(call, receiver)
    subs.faults.add("receiver_unreachable", mailbox=ALICE, count=2)
    ews.deliver(ALICE, simple_mime("late"))
    [late] = receiver.wait(receiver.received)
    attempts = [d for d in subs.subscriptions.deliveries if d.kind == "notification"]
    assert [d.status for d in attempts] == [None, None, 202]
    assert attempts[0].body == attempts[2].body  # the same notification, retried
    assert late["changeType"] == "created"


def test_a_slow_receiver_delays_only_its_own_subscription(
    subs: GraphEmulator, ews: EwsEmulator, call: Call, receiver: Receiver
) -> None:
    """Graph notifies subscriptions independently: while Alice's receiver holds its POST, Bob's
    notification still arrives (one delivery thread, one receiver at a time, made every
    subscription wait for the slowest, and a WAN's latency add up across subscriptions)."""
    subs.subscriptions.settings = replace(FAST, delivery_timeout=10.0)
    _subscribe(call, receiver, notificationUrl=f"{receiver.url}/hold")
    _barrier(call, receiver)
    try:
        ews.deliver(ALICE, simple_mime("held"))
        receiver.wait(receiver.holding.is_set, timeout=3)
        ews.deliver(BOB, simple_mime("not held"))
        [bob] = receiver.wait(lambda: receiver.received("/barrier"))
        assert receiver.received("/hold") == []  # Alice's POST is still held
    finally:
        receiver.release.set()
    [alice] = receiver.wait(lambda: receiver.received("/hold"))
    assert alice["subscriptionId"] != bob["subscriptionId"]
