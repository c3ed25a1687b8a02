"""Pull and streaming subscriptions through exchangelib, and the raw streamed envelopes."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from exchangelib.errors import ErrorSubscriptionNotFound
from exchangelib.properties import CreatedEvent, MovedEvent, NewMailEvent, StatusEvent
from exchangelib.protocol import FailFast
from lxml import etree

from ews_listener_emulators.feed import SampleFactory
from ews_listener_emulators.ops import notifications
from ews_listener_emulators.schema import SchemaValidator
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.soap import MNS, SOAPNS
from ews_listener_emulators.token_server import TokenServer

from .conftest import MAILBOX, OTHER, SCHEMA_DIR, AccountFactory, soap_post

FACTORY = SampleFactory(7)


def _deliver(emulator: EwsEmulator, mailbox: str = MAILBOX, folder: str = "inbox") -> str:
    return emulator.deliver(mailbox, FACTORY.message(mailbox), folder)


def test_pull_subscription_reports_new_mail(emulator: EwsEmulator, account: AccountFactory) -> None:
    """subscribe_to_pull + get_events: NewMail and Created for a delivered message."""
    inbox = account(FailFast()).inbox
    subscription_id, watermark = inbox.subscribe_to_pull()
    item_id = _deliver(emulator)
    notes = list(inbox.get_events(subscription_id, watermark))
    events = [e for n in notes for e in n.events]
    assert [type(e) for e in events] == [NewMailEvent, CreatedEvent]
    assert events[0].item_id.id == item_id
    assert events[0].parent_folder_id.id == inbox.id
    assert notes[-1].more_events is False


def test_get_events_without_news_is_a_status_event(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """No new events: a StatusEvent carrying the current watermark."""
    inbox = account(FailFast()).inbox
    subscription_id, watermark = inbox.subscribe_to_pull()
    (note,) = inbox.get_events(subscription_id, watermark)
    assert [type(e) for e in note.events] == [StatusEvent]
    assert note.events[0].watermark == watermark


def test_get_events_pages_with_more_events(emulator: EwsEmulator, account: AccountFactory) -> None:
    """More events than a page: MoreEvents is true and exchangelib fetches the rest."""
    notifications.configure(emulator, page_size=3)
    inbox = account(FailFast()).inbox
    subscription_id, watermark = inbox.subscribe_to_pull(event_types=["NewMailEvent"])
    ids = [_deliver(emulator) for _ in range(7)]
    notes = list(inbox.get_events(subscription_id, watermark))
    assert [n.more_events for n in notes] == [True, True, False]
    assert [e.item_id.id for n in notes for e in n.events] == ids


def test_folder_filter(emulator: EwsEmulator, account: AccountFactory) -> None:
    """A subscription to the inbox does not see mail filed elsewhere; moves out are seen."""
    emulator.create_folder(MAILBOX, "inbox/Processed")
    acc = account(FailFast())
    subscription_id, watermark = acc.inbox.subscribe_to_pull()
    _deliver(emulator, folder="inbox/Processed")
    item_id = _deliver(emulator)
    acc.inbox.get(id=item_id).move(acc.inbox / "Processed")
    events = [e for n in acc.inbox.get_events(subscription_id, watermark) for e in n.events]
    assert [type(e) for e in events] == [NewMailEvent, CreatedEvent, MovedEvent]
    assert events[2].old_item_id.id == item_id


def test_unknown_and_unsubscribed_subscriptions(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """Unknown, unsubscribed or expired subscriptions: ErrorSubscriptionNotFound."""
    inbox = account(FailFast()).inbox
    subscription_id, watermark = inbox.subscribe_to_pull(timeout=1)
    assert inbox.unsubscribe(subscription_id) is True
    with pytest.raises(ErrorSubscriptionNotFound):
        list(inbox.get_events(subscription_id, watermark))
    registry = notifications.configure(emulator, minute=0.05)
    expiring, watermark = inbox.subscribe_to_pull(timeout=1)
    threading.Event().wait(0.1)  # two protocol minutes of 0.05 s: the subscription times out
    with pytest.raises(ErrorSubscriptionNotFound):
        list(inbox.get_events(expiring, watermark))
    assert registry.all() == []


def test_subscription_of_another_mailbox_is_refused(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """A subscription id is only good for the mailbox that made it."""
    subscription_id, watermark = account(FailFast()).inbox.subscribe_to_pull()
    other = account(FailFast(), OTHER).inbox
    with pytest.raises(Exception, match=r"Access is denied"):
        list(other.get_events(subscription_id, watermark))


def test_streaming_subscription_delivers_then_closes(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """get_streaming_events yields the events of a delivery and ends after ConnectionTimeout."""
    inbox = account(FailFast()).inbox
    subscription_id = inbox.subscribe_to_streaming(event_types=["NewMailEvent"])
    timer = threading.Timer(0.1, _deliver, args=(emulator,))
    started = time.monotonic()
    timer.start()
    notes = list(inbox.get_streaming_events(subscription_id, connection_timeout=1))
    elapsed = time.monotonic() - started
    events = [e for n in notes for e in n.events]
    assert [type(e) for e in events] == [NewMailEvent]
    assert 0.35 <= elapsed < 3  # one protocol minute is 0.4 s in these tests
    assert inbox.unsubscribe(subscription_id) is True


def test_streaming_with_unknown_subscription(
    emulator: EwsEmulator, account: AccountFactory
) -> None:
    """Streaming an unknown subscription id: ErrorSubscriptionNotFound."""
    inbox = account(FailFast()).inbox
    with pytest.raises(ErrorSubscriptionNotFound):
        list(inbox.get_streaming_events("AAAAbogus", connection_timeout=1))


# What the EWS Managed API (and its ports) search the stream for: the start tag of each envelope.
ENVELOPE_START = f'<Envelope xmlns="{SOAPNS}">'


def _stream_raw(emulator: EwsEmulator, account: AccountFactory, token_server: TokenServer) -> bytes:
    subscription_id = account(FailFast()).inbox.subscribe_to_streaming()
    _deliver(emulator)
    body = (
        "<m:GetStreamingEvents><m:SubscriptionIds>"
        f"<t:SubscriptionId>{subscription_id}</t:SubscriptionId>"
        "</m:SubscriptionIds><m:ConnectionTimeout>1</m:ConnectionTimeout></m:GetStreamingEvents>"
    )
    assert emulator.ca is not None
    with httpx.Client(verify=emulator.ca.client_context()) as client:
        response = soap_post(client, emulator, token_server, body)
    assert response.headers["transfer-encoding"] == "chunked"
    return response.content


def test_streamed_envelopes_are_complete_and_schema_valid(
    emulator: EwsEmulator, account: AccountFactory, token_server: TokenServer
) -> None:
    """The raw stream: chunked, complete envelopes, OK first, Closed last, each body valid."""
    content = _stream_raw(emulator, account, token_server).decode()
    documents = [ENVELOPE_START + part for part in content.split(ENVELOPE_START) if part.strip()]
    statuses = []
    validator = SchemaValidator(SCHEMA_DIR) if SCHEMA_DIR else None
    for document in documents:
        root = etree.fromstring(document.encode())
        body_child = root.find(f"{{{SOAPNS}}}Body")[0]
        statuses.append(body_child.findtext(f".//{{{MNS}}}ConnectionStatus"))
        if validator is not None:
            assert validator.validate(body_child) is None
    assert statuses[0] == "OK"
    assert statuses[-1] == "Closed"
    assert len(documents) >= 3  # events, at least one keep-alive (0.1 s), Closed
    assert "NewMailEvent" in content


def test_streamed_envelopes_use_exchange_streaming_form(
    emulator: EwsEmulator, account: AccountFactory, token_server: TokenServer
) -> None:
    """Each envelope starts with the literal the Managed API looks for; events in m:Notification."""
    content = _stream_raw(emulator, account, token_server).decode()
    assert "<?xml" not in content  # a declaration in mid-stream breaks a fragment reader
    assert content.startswith(ENVELOPE_START)
    assert "<s:Envelope" not in content
    documents = [ENVELOPE_START + part for part in content.split(ENVELOPE_START) if part.strip()]
    notifications = [
        element
        for document in documents
        for element in etree.fromstring(document.encode()).iter(f"{{{MNS}}}Notification")
    ]
    assert notifications, "the delivery's events are in m:Notifications/m:Notification"
    assert b"t:Notification" not in content.encode()


def test_streamed_envelopes_are_validated_by_the_server(
    emulator: EwsEmulator, account: AccountFactory, token_server: TokenServer
) -> None:
    """With response validation on, the stream's request log entry carries the verdict."""
    if SCHEMA_DIR is None:
        pytest.fail("EWS_SCHEMA_DIR or ../shared/ews-schema is needed for this test")
    _stream_raw(emulator, account, token_server)
    (record,) = [r for r in emulator.request_log if r.operation == "GetStreamingEvents"]
    assert (record.response_valid, record.schema_error) == (True, None)
