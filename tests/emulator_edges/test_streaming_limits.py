"""Exchange's streaming limits in the emulator (issue 15): ConnectionTimeout 1-30, 200
subscriptions a connection, subscriptions and streams per mailbox, queue overflow, affinity, and
the streaming faults of the admin API; every answer schema-valid (the fixture checks)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest
from exchangelib.errors import (
    ErrorExceededConnectionCount,
    ErrorExceededSubscriptionCount,
    ErrorInvalidArgument,
    ErrorMissedNotificationEvents,
    ErrorNewEventStreamConnectionOpened,
    ErrorSchemaValidation,
    ErrorSubscriptionNotFound,
)

from ews_listener_emulators.admin import AdminServer
from ews_listener_emulators.feed import SampleFactory
from ews_listener_emulators.ops import notifications
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer

from .conftest import CLIENT_ID, MAILBOX, OTHER, TENANT, AccountFactory, envelope, soap_post

FACTORY = SampleFactory(11)
SUBSCRIBE = (
    "<m:Subscribe><m:StreamingSubscriptionRequest><t:FolderIds>"
    '<t:DistinguishedFolderId Id="inbox"/></t:FolderIds><t:EventTypes>'
    "<t:EventType>NewMailEvent</t:EventType></t:EventTypes>"
    "</m:StreamingSubscriptionRequest></m:Subscribe>"
)


def _deliver(emulator: EwsEmulator, mailbox: str = MAILBOX) -> str:
    return emulator.deliver(mailbox, FACTORY.message(mailbox), "inbox")


@pytest.mark.parametrize("minutes", [31, 60])
def test_a_connection_timeout_over_30_minutes_is_refused(
    emulator: EwsEmulator, account: AccountFactory, minutes: int
) -> None:
    """Exchange caps a streaming connection at 30 minutes (messages.xsd): ErrorSchemaValidation
    above, with request validation on (Exchange's) or off (the operation's own check)."""
    inbox = account().inbox
    subscription_id = inbox.subscribe_to_streaming()
    validator = emulator.validator
    for checked in (validator, None):
        emulator.validator = checked
        try:
            with pytest.raises(ErrorSchemaValidation, match="30"):
                list(inbox.get_streaming_events(subscription_id, connection_timeout=minutes))
        finally:
            emulator.validator = validator
    # The request was meant to break the schema: not a violation of these tests.
    log = emulator.request_log
    for record in [r for r in log if r.schema_valid is False]:
        log.remove(record)


def test_more_than_200_subscriptions_on_one_connection_are_refused(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """201 subscription ids in one GetStreamingEvents: ErrorInvalidArgument before any is looked
    up; 200 pass that check (and then are not found, being made up)."""
    inbox = account().inbox
    made_up = [f"AAAAbogus{n}" for n in range(201)]
    with pytest.raises(ErrorInvalidArgument, match="200"):
        list(inbox.get_streaming_events(made_up, connection_timeout=1))
    with pytest.raises(ErrorSubscriptionNotFound):
        list(inbox.get_streaming_events(made_up[:200], connection_timeout=1))


def test_subscriptions_per_mailbox_are_capped(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """EWSMaxSubscriptions (20 in Exchange Online): the next Subscribe is refused until one goes."""
    notifications.configure(emulator, subscription_limit=2)
    inbox = account().inbox
    first = inbox.subscribe_to_streaming()
    inbox.subscribe_to_streaming()
    with pytest.raises(ErrorExceededSubscriptionCount):
        inbox.subscribe_to_streaming()
    account(mailbox=OTHER).inbox.subscribe_to_streaming()  # another mailbox has its own budget
    inbox.unsubscribe(first)
    inbox.subscribe_to_streaming()


def test_streams_per_mailbox_are_capped(emulator: EwsEmulator, account: AccountFactory) -> None:
    """HangingConnectionLimit (10 in Exchange Online): a stream past it is refused while the
    others are open, and admitted once one ended."""
    registry = notifications.configure(emulator, hanging_limit=1, minute=60.0)
    inbox = account().inbox
    subscription_id = inbox.subscribe_to_streaming()
    cut: list[BaseException] = []

    def hang() -> None:
        try:
            list(inbox.get_streaming_events(subscription_id, connection_timeout=1))
        except Exception as e:  # drop_streams below cuts it: expected, and checked
            cut.append(e)

    opened = threading.Thread(target=hang, daemon=True)
    opened.start()
    deadline = threading.Event()
    while registry.streams(MAILBOX) == 0 and not deadline.wait(0.02):
        pass
    other = account().inbox
    with pytest.raises(ErrorExceededConnectionCount):
        list(other.get_streaming_events(other.subscribe_to_streaming(), connection_timeout=1))
    assert registry.drop_streams(MAILBOX) == 1
    opened.join(10)
    assert len(cut) == 1  # the stream was cut, not closed
    while registry.streams(MAILBOX) and not deadline.wait(0.02):
        pass
    notifications.configure(emulator, minute=0.4)
    assert list(other.get_streaming_events(other.subscribe_to_streaming(), 1)) == []


def test_a_newer_stream_takes_a_subscription_over(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """One stream carries a subscription at a time: a second GetStreamingEvents naming it takes
    it over, the first ends with ErrorNewEventStreamConnectionOpened, and the next event arrives
    on the second (the first, whose client may have left it, never consumes it)."""
    registry = notifications.configure(emulator, minute=60.0, keepalive=0.2)
    inbox = account().inbox
    subscription_id = inbox.subscribe_to_streaming(event_types=["NewMailEvent"])
    ended: dict[str, object] = {}
    got: list[object] = []

    def first() -> None:
        try:
            ended["events"] = list(inbox.get_streaming_events(subscription_id, 1))
        except Exception as e:  # the answer under test, checked below
            ended["error"] = e

    def second() -> None:
        for notification in account().inbox.get_streaming_events(subscription_id, 1):
            if notification.events and any(
                type(e).__name__ == "NewMailEvent" for e in notification.events
            ):
                got.append(notification)
                return

    old = threading.Thread(target=first, daemon=True)
    old.start()
    pause = threading.Event()
    while registry.streams(MAILBOX) < 1 and not pause.wait(0.02):
        pass
    new = threading.Thread(target=second, daemon=True)
    new.start()
    old.join(10)
    assert isinstance(ended.get("error"), ErrorNewEventStreamConnectionOpened), ended
    _deliver(emulator)
    new.join(10)
    assert len(got) == 1


def test_an_overflowing_queue_is_missed_notification_events(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """More events wait than the queue holds: ErrorMissedNotificationEvents, subscription gone."""
    notifications.configure(emulator, queue_limit=3)
    inbox = account().inbox
    subscription_id = inbox.subscribe_to_streaming(event_types=["NewMailEvent"])
    for _ in range(5):
        _deliver(emulator)
    with pytest.raises(ErrorMissedNotificationEvents):
        list(inbox.get_streaming_events(subscription_id, connection_timeout=1))
    with pytest.raises(ErrorSubscriptionNotFound):
        list(inbox.get_streaming_events(subscription_id, connection_timeout=1))


def test_affinity_cookie_is_set_only_when_asked_for(
    emulator: EwsEmulator, token_server: TokenServer
) -> None:
    """X-PreferServerAffinity: true gets the back end of the X-AnchorMailbox as a cookie; a
    stream of another mailbox's subscription, sent with that cookie, reaches it."""
    registry = notifications.subscriptions(emulator)
    assert emulator.ca is not None
    with httpx.Client(verify=emulator.ca.client_context()) as client:
        plain = soap_post(client, emulator, token_server, SUBSCRIBE)
        assert "set-cookie" not in plain.headers
        token = token_server.issue_token(TENANT, CLIENT_ID)
        headers = {
            "Authorization": f"Bearer {token}",
            "X-AnchorMailbox": OTHER,
            "X-PreferServerAffinity": "true",
            "Content-Type": "text/xml; charset=utf-8",
        }
        asked = client.post(emulator.url, content=envelope(SUBSCRIBE, MAILBOX), headers=headers)
    cookie = asked.headers["set-cookie"]
    assert cookie.startswith(f"X-BackEndOverrideCookie=emu-backend-{registry.backend_of(OTHER)};")
    subscription = registry.all()[-1]
    assert subscription.mailbox.address == MAILBOX
    assert subscription.backend == registry.backend_of(OTHER)


@pytest.fixture
def admin(emulator: EwsEmulator, token_server: TokenServer) -> Iterator[httpx.Client]:
    with AdminServer(emulator, token_server) as server, httpx.Client(base_url=server.url) as c:
        yield c


def test_admin_streaming_faults(
    admin: httpx.Client, emulator: EwsEmulator, account: AccountFactory
) -> None:
    """POST /admin/streaming/{drop,remove,miss}: each acts on the mailbox's subscriptions."""
    inbox = account().inbox
    first = inbox.subscribe_to_streaming()
    answer = admin.post("/streaming/miss", json={"mailbox": MAILBOX}).json()
    assert answer == {"action": "miss", "mailbox": MAILBOX, "affected": 1}
    with pytest.raises(ErrorMissedNotificationEvents):
        list(inbox.get_streaming_events(first, connection_timeout=1))
    second = inbox.subscribe_to_streaming()
    assert admin.post("/streaming/remove", json={}).json()["affected"] == 1
    with pytest.raises(ErrorSubscriptionNotFound):
        list(inbox.get_streaming_events(second, connection_timeout=1))
    assert admin.post("/streaming/drop", json={"mailbox": OTHER}).json()["affected"] == 0
    assert admin.post("/streaming/bogus", json={}).status_code == 404
