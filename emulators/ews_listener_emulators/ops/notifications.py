"""Notification operations: Subscribe (pull, streaming), GetEvents, GetStreamingEvents, Unsubscribe.

Events come from the store's append-only per-mailbox event log (``MailStore.events_since``,
``MailStore.changed``); a subscription is a position in that log plus a folder and event-type
filter. Watermarks are the log position, encoded like ``Event.watermark``.

Time is measured in a configurable "minute" (``configure(emulator, minute=…)``): pull
subscription timeouts and ``ConnectionTimeout`` of GetStreamingEvents are given in minutes by the
protocol, and tests shrink the minute to a fraction of a second instead of waiting.

Shapes follow messages.xsd/types.xsd and real captures: ``m:Notification`` in GetEvents, and
``m:Notifications`` holding ``m:Notification`` in GetStreamingEvents. There the schema says
``t:Notification``, but Exchange writes ``m:Notification`` (the MS docs capture
how-to-stream-notifications….04) and the EWS Managed API reads only that name; exchangelib reads
either. ``schema.SchemaValidator`` knows this one departure. A streamed response is a sequence of
complete envelopes in Exchange's streaming form (``soap.streaming_envelope``) ending with
``ConnectionStatus`` ``Closed``
(ews-samples/from-clients/exchangelib.GetStreamingEventsResponse.ConnectionClosed.xml).

Exchange's streaming limits (issue 15), each a field of ``Subscriptions``:

- ``ConnectionTimeout`` outside 1-30 minutes is ``ErrorSchemaValidation`` (messages.xsd's range);
  more than 200 subscriptions in one ``GetStreamingEvents`` are ``ErrorInvalidArgument``.
- A streaming subscription no connection holds for 30 minutes expires (``ErrorSubscriptionNotFound``
  afterwards).
- ``queue_limit`` events waiting for a subscription nobody reads: the next stream answers
  ``ErrorMissedNotificationEvents`` for it (naming it in ``ErrorSubscriptionIds``) and drops it.
- ``hanging_limit`` streams at once per impersonated mailbox (Exchange Online's
  ``HangingConnectionLimit``, 10) and ``subscription_limit`` subscriptions per mailbox
  (``EWSMaxSubscriptions``, 20): ``ErrorExceededConnectionCount`` /
  ``ErrorExceededSubscriptionCount``.
  Streams have their own budget, apart from the 27 concurrent requests (NEEDS.md item 1).
- Affinity (Microsoft, "Maintain affinity between a group of subscriptions and the Mailbox
  server"): a mailbox lives on one of ``backends`` back-end servers (a stable hash of its address).
  A request is routed by its ``X-BackEndOverrideCookie`` when it has one, else by its
  ``X-AnchorMailbox``; a subscription lives on the back end that served its ``Subscribe``, whose
  answer sets the cookie when the request said ``X-PreferServerAffinity: true``.
  ``GetStreamingEvents`` routed to another back end does not find it
  (``ErrorSubscriptionNotFound``). One stream may carry the subscriptions of many mailboxes of the
  same application (``ErrorSubscriptionAccessDenied`` for another application's).
- A subscription is carried by one stream at a time, the newest: a ``GetStreamingEvents`` that
  names a subscription another open stream carries takes it over, and the older stream ends with
  ``ErrorNewEventStreamConnectionOpened`` naming it (messages.xsd's code for this), so an event
  is never consumed by a connection its client has already left for a new one.

Fault injection (admin API and ``Subscriptions`` methods): ``drop_streams`` cuts open streams
mid-way, ``remove_subscriptions`` forgets subscriptions (as a server restart does) and
``miss_events`` makes the next envelope of a stream ``ErrorMissedNotificationEvents``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from ews_listener_emulators.ops import (
    OpContext,
    OpFault,
    OpResult,
    Reply,
    Stream,
    operation,
    response,
    success,
)
from ews_listener_emulators.soap import error_message, m, sub, t
from ews_listener_emulators.store import Event, Folder, Mailbox, MailStore

__all__ = [
    "EVENT_TYPES",
    "Subscription",
    "Subscriptions",
    "configure",
    "decode_watermark",
    "encode_watermark",
    "subscriptions",
]

#: The event types a subscription may ask for (types.xsd NotificationEventTypeType).
EVENT_TYPES = frozenset(
    {
        "CopiedEvent",
        "CreatedEvent",
        "DeletedEvent",
        "ModifiedEvent",
        "MovedEvent",
        "NewMailEvent",
        "FreeBusyChangedEvent",
    }
)
_STREAMING_IDLE_MINUTES = 30  # Exchange drops a streaming subscription unused this long.
_TRUE = ("true", "1")


def encode_watermark(seq: int) -> str:
    """The watermark of event log position ``seq`` (same encoding as ``Event.watermark``)."""
    return base64.b64encode(b"WM" + struct.pack(">Q", seq)).decode()


def decode_watermark(watermark: str) -> int | None:
    """The log position of a watermark, or None when it is not one of ours."""
    try:
        raw = base64.b64decode(watermark.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 10 or not raw.startswith(b"WM"):
        return None
    seq: int = struct.unpack(">Q", raw[2:])[0]
    return seq


@dataclass
class Subscription:
    """A pull or streaming subscription: a mailbox, a filter and a position in the event log."""

    subscription_id: str
    kind: str  # "pull" | "streaming"
    mailbox: Mailbox
    folder_ids: frozenset[str] | None  # None: every folder
    event_types: frozenset[str]
    position: int
    timeout_minutes: int
    last_seen: float
    connections: int = 0
    # The stream that carries it now (its ``dropped`` event as a token): the newest one.
    stream: threading.Event | None = None
    client_id: str | None = None  # the application that made it
    backend: int = 0  # the back-end server that holds it (see "Affinity" above)
    missed: bool = False  # fault: the next stream reports ErrorMissedNotificationEvents
    # The watermark of the last GetEvents call and whether its answer had MoreEvents (see there).
    last_watermark: str | None = None
    last_more: bool = False

    def wants(self, event: Event, mailbox: Mailbox) -> bool:
        """Whether ``event`` passes this subscription's event-type and folder filter."""
        if f"{event.kind}Event" not in self.event_types:
            return False
        if self.folder_ids is None:
            return True
        parent = _parent_id(event, mailbox)
        return parent in self.folder_ids or (
            event.old_folder_id is not None and event.old_folder_id in self.folder_ids
        )


@dataclass
class Subscriptions:
    """The subscriptions of one emulator, and the time unit its notification operations use.

    ``minute``: seconds in a protocol minute; ``keepalive``: seconds between keep-alive
    envelopes of a stream (default: half a minute); ``page_size``: events per GetEvents answer
    (Exchange returns at most 50 and sets ``MoreEvents``).
    """

    minute: float = 60.0
    keepalive: float | None = None
    page_size: int = 50
    clock: Callable[[], float] = time.monotonic
    backends: int = 4
    hanging_limit: int = 10
    subscription_limit: int = 20
    # Exchange does not document its queue size; large enough never to bite an attended stream.
    queue_limit: int = 1000
    _by_id: dict[str, Subscription] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _hanging: dict[str, int] = field(default_factory=dict)
    _streams: list[tuple[str, threading.Event]] = field(default_factory=list)

    @property
    def lock(self) -> threading.Lock:
        """Held while a stream takes its subscriptions over or reads their events."""
        return self._lock

    def backend_of(self, address: str) -> int:
        """The back-end server a mailbox lives on (stable across runs)."""
        digest = hashlib.sha256(address.lower().encode()).digest()
        return int.from_bytes(digest[:4], "big") % max(self.backends, 1)

    def route(self, headers: Any, fallback: str | None) -> int:
        """The back end a request reaches: its cookie's, else its anchor mailbox's."""
        cookie = _cookie(headers)
        if cookie is not None:
            return cookie
        anchor = headers.get("X-AnchorMailbox") or fallback or ""
        return self.backend_of(anchor)

    def count(self, address: str) -> int:
        """Live subscriptions of a mailbox (for ``subscription_limit``)."""
        key = address.lower()
        with self._lock:
            return sum(1 for s in self._by_id.values() if s.mailbox.address.lower() == key)

    def hang(self, address: str, dropped: threading.Event) -> bool:
        """Count a stream of ``address`` in; False past ``hanging_limit``."""
        key = address.lower()
        with self._lock:
            if self._hanging.get(key, 0) >= self.hanging_limit:
                return False
            self._hanging[key] = self._hanging.get(key, 0) + 1
            self._streams.append((key, dropped))
            return True

    def unhang(self, address: str, dropped: threading.Event) -> None:
        key = address.lower()
        with self._lock:
            self._hanging[key] = self._hanging.get(key, 1) - 1
            if self._hanging[key] <= 0:
                del self._hanging[key]
            with contextlib.suppress(ValueError):
                self._streams.remove((key, dropped))

    def streams(self, address: str) -> int:
        """Streams of ``address`` open now."""
        with self._lock:
            return self._hanging.get(address.lower(), 0)

    # --- faults -----------------------------------------------------------------------------

    def drop_streams(self, mailbox: str | None = None) -> int:
        """Cut the open streams (of the one impersonating ``mailbox``, or all) mid-way."""
        key = mailbox.lower() if mailbox else None
        with self._lock:
            chosen = [event for owner, event in self._streams if key in (None, owner)]
        for event in chosen:
            event.set()
        return len(chosen)

    def remove_subscriptions(self, mailbox: str | None = None) -> int:
        """Forget the subscriptions (of ``mailbox``, or all), as a restarted server does."""
        key = mailbox.lower() if mailbox else None
        with self._lock:
            gone = [
                sid for sid, s in self._by_id.items() if key in (None, s.mailbox.address.lower())
            ]
            for sid in gone:
                del self._by_id[sid]
        return len(gone)

    def miss_events(self, mailbox: str | None = None) -> int:
        """The next stream envelope of these subscriptions is ErrorMissedNotificationEvents."""
        key = mailbox.lower() if mailbox else None
        with self._lock:
            chosen = [s for s in self._by_id.values() if key in (None, s.mailbox.address.lower())]
            for subscription in chosen:
                subscription.missed = True
        return len(chosen)

    @property
    def keepalive_interval(self) -> float:
        return self.keepalive if self.keepalive is not None else self.minute / 2

    def add(self, subscription: Subscription) -> None:
        with self._lock:
            self._by_id[subscription.subscription_id] = subscription

    def get(self, store: MailStore, subscription_id: str, kind: str | None) -> Subscription | None:
        """A live subscription (not expired, its mailbox not reset away), or None."""
        now = self.clock()
        with self._lock:
            found = self._by_id.get(subscription_id)
            if found is None or (kind is not None and found.kind != kind):
                return None
            idle = found.timeout_minutes * self.minute
            expired = found.connections == 0 and now - found.last_seen > idle
            gone = store.mailbox(found.mailbox.address) is not found.mailbox
            if expired or gone:
                del self._by_id[subscription_id]
                return None
            return found

    def holds(self, subscription_id: str) -> bool:
        """Whether the subscription is still registered (not removed or unsubscribed)."""
        with self._lock:
            return subscription_id in self._by_id

    def remove(self, subscription_id: str) -> bool:
        with self._lock:
            return self._by_id.pop(subscription_id, None) is not None

    def all(self) -> list[Subscription]:
        """Every subscription still registered (expired ones until next looked up)."""
        with self._lock:
            return list(self._by_id.values())

    def clear(self) -> None:
        with self._lock:
            self._by_id.clear()


_REGISTRIES: weakref.WeakKeyDictionary[Any, Subscriptions] = weakref.WeakKeyDictionary()
_REGISTRIES_LOCK = threading.Lock()


def subscriptions(emulator: Any) -> Subscriptions:
    """The subscription registry of ``emulator`` (created on first use)."""
    with _REGISTRIES_LOCK:
        registry = _REGISTRIES.get(emulator)
        if registry is None:
            registry = _REGISTRIES[emulator] = Subscriptions()
        return registry


def configure(
    emulator: Any,
    *,
    minute: float | None = None,
    keepalive: float | None = None,
    page_size: int | None = None,
    backends: int | None = None,
    hanging_limit: int | None = None,
    subscription_limit: int | None = None,
    queue_limit: int | None = None,
) -> Subscriptions:
    """Set the notification time unit (seconds per protocol minute), keep-alive, page size and
    the streaming limits (see the module docstring)."""
    registry = subscriptions(emulator)
    for name, value in (
        ("minute", minute),
        ("keepalive", keepalive),
        ("page_size", page_size),
        ("backends", backends),
        ("hanging_limit", hanging_limit),
        ("subscription_limit", subscription_limit),
        ("queue_limit", queue_limit),
    ):
        if value is not None:
            setattr(registry, name, value)
    return registry


_COOKIE = "X-BackEndOverrideCookie"
_COOKIE_PREFIX = "emu-backend-"


def _cookie(headers: Any) -> int | None:
    """The back end named by the request's affinity cookie (Cookie header, or exchangelib's
    ``X-BackEndOverrideCookie`` header form), or None."""
    values = [headers.get(_COOKIE) or ""]
    for part in (headers.get("Cookie") or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == _COOKIE:
            values.append(value)
    for value in values:
        if value.startswith(_COOKIE_PREFIX) and value[len(_COOKIE_PREFIX) :].isdigit():
            return int(value[len(_COOKIE_PREFIX) :])
    return None


# --- element helpers ---------------------------------------------------------------------------


def _text(parent: etree._Element, *names: str) -> str | None:
    for name in names:
        found = parent.find(name)
        if found is not None and found.text:
            return found.text.strip()
    return None


def _parent_id(event: Event, mailbox: Mailbox) -> str | None:
    if event.is_folder and event.folder_id is not None:
        folder = mailbox.folders.get(event.folder_id)
        return folder.parent.folder_id if folder is not None and folder.parent else None
    return event.folder_id


def _folder_ref(tag: str, folder_id: str | None, mailbox: Mailbox) -> etree._Element:
    element = etree.Element(t(tag))
    element.set("Id", folder_id or "")
    folder = mailbox.folders.get(folder_id or "")
    if folder is not None:
        element.set("ChangeKey", folder.change_key)
    return element


def _event_element(event: Event, store: MailStore, mailbox: Mailbox) -> etree._Element:
    element = etree.Element(t(f"{event.kind}Event"))
    sub(element, t("Watermark"), encode_watermark(event.seq))
    sub(element, t("TimeStamp"), event.timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"))
    if event.is_folder:
        element.append(_folder_ref("FolderId", event.folder_id, mailbox))
    else:
        item_ref = sub(element, t("ItemId"), attrib={"Id": event.item_id or ""})
        item = store.item(mailbox, event.item_id or "")
        if item is not None:
            item_ref.set("ChangeKey", item.change_key)
    element.append(_folder_ref("ParentFolderId", _parent_id(event, mailbox), mailbox))
    if event.kind in ("Moved", "Copied"):
        if event.is_folder:
            element.append(_folder_ref("OldFolderId", event.old_item_id, mailbox))
        else:
            sub(element, t("OldItemId"), attrib={"Id": event.old_item_id or ""})
        element.append(_folder_ref("OldParentFolderId", event.old_folder_id, mailbox))
    return element


def _pending(store: MailStore, sub_: Subscription, limit: int) -> tuple[list[Event], int, bool]:
    """Up to ``limit`` wanted events after the subscription's position: (events, new position,
    more left). Unwanted events still move the position (they will never be wanted)."""
    raw = store.events_since(sub_.mailbox, sub_.position)
    wanted: list[Event] = []
    position = sub_.position
    for event in raw:
        if sub_.wants(event, sub_.mailbox):
            if len(wanted) == limit:
                return wanted, position, True
            wanted.append(event)
        position = event.seq
    return wanted, position, False


def _new_subscription_id() -> str:
    return base64.b64encode(b"\x00\x00EMUS" + os.urandom(20)).decode()


# --- Subscribe ---------------------------------------------------------------------------------


@operation("Subscribe")
def subscribe(ctx: OpContext, request: etree._Element) -> OpResult:
    """Create a pull or streaming subscription (push is not emulated)."""
    mailbox = ctx.mailbox
    assert mailbox is not None
    registry = subscriptions(ctx.emulator)
    pull = request.find(m("PullSubscriptionRequest"))
    streaming = request.find(m("StreamingSubscriptionRequest"))
    spec = pull if pull is not None else streaming
    if spec is None:
        return _error(
            "Subscribe",
            "ErrorInvalidSubscriptionRequest",
            "Push subscriptions are not supported by this server.",
        )
    try:
        folders = _subscribed_folders(ctx.store, mailbox, spec)
    except LookupError as exc:
        return _error("Subscribe", "ErrorFolderNotFound", str(exc))
    event_types = frozenset(
        e.text.strip() for e in spec.iterfind(f"{t('EventTypes')}/{t('EventType')}") if e.text
    )
    if not event_types or not event_types <= EVENT_TYPES:
        return _error("Subscribe", "ErrorInvalidRequest", "The event types are not valid.")
    position = ctx.store.last_event_seq(mailbox)
    watermark = _text(spec, m("Watermark"), t("Watermark"))
    if watermark is not None:
        decoded = decode_watermark(watermark)
        if decoded is None or decoded > position:
            return _error("Subscribe", "ErrorInvalidWatermark", "The watermark is invalid.")
        position = decoded
    if registry.count(mailbox.address) >= registry.subscription_limit:
        return _error(
            "Subscribe",
            "ErrorExceededSubscriptionCount",
            "You have exceeded the maximum number of subscriptions for this mailbox.",
        )
    headers = ctx.http.headers
    backend = registry.route(headers, mailbox.address)
    timeout = 0
    if pull is not None:
        timeout = int(_text(pull, t("Timeout")) or "30")
        if not 1 <= timeout <= 1440:
            return _error("Subscribe", "ErrorInvalidPullSubscriptionTimeout", "Bad timeout.")
    subscription = Subscription(
        subscription_id=_new_subscription_id(),
        kind="pull" if pull is not None else "streaming",
        mailbox=mailbox,
        folder_ids=folders,
        event_types=event_types,
        position=position,
        timeout_minutes=timeout or _STREAMING_IDLE_MINUTES,
        last_seen=registry.clock(),
        client_id=ctx.client_id,
        backend=backend,
    )
    registry.add(subscription)
    message = success("SubscribeResponseMessage")
    sub(message, m("SubscriptionId"), subscription.subscription_id)
    if pull is not None:
        sub(message, m("Watermark"), encode_watermark(position))
    ctx.notes["subscription"] = subscription.kind
    set_cookie: dict[str, str] = {}
    if (headers.get("X-PreferServerAffinity") or "").lower() in _TRUE:
        set_cookie["Set-Cookie"] = f"{_COOKIE}={_COOKIE_PREFIX}{backend}; path=/; secure"
    return Reply(response("Subscribe", [message]), headers=set_cookie)


def _subscribed_folders(
    store: MailStore, mailbox: Mailbox, spec: etree._Element
) -> frozenset[str] | None:
    if (spec.get("SubscribeToAllFolders") or "").lower() in _TRUE:
        return None
    container = spec.find(t("FolderIds"))
    if container is None:
        return None
    found: set[str] = set()
    for ref in container:
        key = ref.get("Id") or ""
        folder: Folder | None = store.folder(mailbox, key)
        if folder is None:
            raise LookupError(f"The specified folder could not be found in the store: {key}")
        found.add(folder.folder_id)
    return frozenset(found)


def _error(operation_name: str, code: str, text: str) -> Reply:
    return Reply(
        response(operation_name, [error_message(f"{operation_name}ResponseMessage", code, text)])
    )


# --- GetEvents ---------------------------------------------------------------------------------


@operation("GetEvents")
def get_events(ctx: OpContext, request: etree._Element) -> OpResult:
    """Events of a pull subscription after the watermark, at most ``page_size`` a call."""
    registry = subscriptions(ctx.emulator)
    subscription_id = _text(request, m("SubscriptionId")) or ""
    watermark = _text(request, m("Watermark")) or ""
    found = registry.get(ctx.store, subscription_id, "pull")
    if found is None:
        return _error("GetEvents", "ErrorSubscriptionNotFound", "The subscription was not found.")
    if found.mailbox is not ctx.mailbox:
        return _error("GetEvents", "ErrorSubscriptionAccessDenied", "Access is denied.")
    position = decode_watermark(watermark)
    if position is None or position > ctx.store.last_event_seq(found.mailbox):
        return _error("GetEvents", "ErrorInvalidWatermark", "The watermark is invalid.")
    if not (found.last_more and watermark == found.last_watermark):
        found.position = position
    # else: exchangelib's ``Folder.get_events`` pages by repeating the *first* watermark while
    # MoreEvents is true (folders/base.py, 5.6.0); rewinding to it would loop forever, so a
    # repeated watermark after MoreEvents continues where the last page stopped. Any other
    # watermark rewinds, so a client that lost an answer can ask again.
    found.last_seen = registry.clock()
    previous = encode_watermark(found.position)
    events, new_position, more = _pending(ctx.store, found, registry.page_size)
    found.position = new_position
    found.last_watermark, found.last_more = watermark, more
    message = success("GetEventsResponseMessage")
    notification = sub(message, m("Notification"))
    _fill_notification(notification, ctx.store, found, events, new_position, previous, more)
    ctx.notes["events"] = len(events)
    return Reply(response("GetEvents", [message]))


def _fill_notification(
    notification: etree._Element,
    store: MailStore,
    subscription: Subscription,
    events: Sequence[Event],
    position: int,
    previous: str | None,
    more: bool | None,
) -> None:
    sub(notification, t("SubscriptionId"), subscription.subscription_id)
    if previous is not None:
        sub(notification, t("PreviousWatermark"), previous)
    if more is not None:
        sub(notification, t("MoreEvents"), "true" if more else "false")
    for event in events:
        notification.append(_event_element(event, store, subscription.mailbox))
    if not events:
        # Nothing new: Exchange answers with a StatusEvent carrying the current watermark.
        status = sub(notification, t("StatusEvent"))
        sub(status, t("Watermark"), encode_watermark(position))


# --- GetStreamingEvents ------------------------------------------------------------------------


@operation("GetStreamingEvents")
def get_streaming_events(ctx: OpContext, request: etree._Element) -> OpResult:
    """A chunked stream of envelopes: events or keep-alives, then ``Closed`` after the timeout."""
    registry = subscriptions(ctx.emulator)
    ids = [
        e.text.strip()
        for e in request.iterfind(f"{m('SubscriptionIds')}/{t('SubscriptionId')}")
        if e.text
    ]
    try:
        minutes = int(_text(request, m("ConnectionTimeout")) or "30")
    except ValueError:
        minutes = 0
    if not 1 <= minutes <= 30:
        # messages.xsd restricts ConnectionTimeout to 1-30, so Exchange refuses it in schema
        # validation; the same answer when the emulator's request validation is off.
        raise OpFault(
            "ErrorSchemaValidation",
            "The request failed schema validation: ConnectionTimeout must be between 1 and 30.",
        )
    if len(ids) > 200:
        return _streaming_error(
            "ErrorInvalidArgument", "At most 200 subscriptions may share a connection.", []
        )
    assert ctx.mailbox is not None
    backend = registry.route(ctx.http.headers, ctx.mailbox.address)
    live: list[Subscription] = []
    bad: list[str] = []
    denied: list[str] = []
    for subscription_id in ids:
        found = registry.get(ctx.store, subscription_id, "streaming")
        if found is None or found.backend != backend:
            bad.append(subscription_id)
        elif found.client_id != ctx.client_id:
            denied.append(subscription_id)
        else:
            live.append(found)
    if denied:
        return _streaming_error("ErrorSubscriptionAccessDenied", "Access is denied.", denied)
    if bad or not live:
        return _streaming_error("ErrorSubscriptionNotFound", "The subscription was not found.", bad)
    dropped = threading.Event()
    if not registry.hang(ctx.mailbox.address, dropped):
        return _streaming_error(
            "ErrorExceededConnectionCount",
            "You have exceeded the available concurrent connections for your account. "
            "Try again once your other requests have completed.",
            [],
        )
    ctx.notes["subscriptions"] = len(live)
    return Stream(_stream(ctx, registry, live, minutes * registry.minute, dropped))


def _streaming_error(code: str, text: str, subscription_ids: Sequence[str]) -> Reply:
    message = error_message("GetStreamingEventsResponseMessage", code, text)
    if subscription_ids:
        container = sub(message, m("ErrorSubscriptionIds"))
        for subscription_id in subscription_ids:
            sub(container, t("SubscriptionId"), subscription_id)
    return Reply(response("GetStreamingEvents", [message]))


def _stream(
    ctx: OpContext,
    registry: Subscriptions,
    live: list[Subscription],
    duration: float,
    dropped: threading.Event,
) -> Iterator[etree._Element]:
    store = ctx.store
    assert ctx.mailbox is not None
    address = ctx.mailbox.address
    deadline = registry.clock() + duration
    with registry.lock:
        for subscription in live:
            subscription.connections += 1
            subscription.stream = dropped  # taken over from an older stream, if one had it
    try:
        first = True
        last_sent = registry.clock()
        while not ctx.closing.is_set():
            if dropped.is_set():
                drop: Callable[[], None] = getattr(ctx.http, "drop_connection")  # noqa: B009
                drop()  # fault: cut mid-stream, no Closed
                return
            now = registry.clock()
            if now >= deadline:
                break
            gone = [s for s in live if not registry.holds(s.subscription_id)]
            if gone:
                # Removed under the stream (a server restart, a mailbox move): say which.
                yield _lost_response(
                    gone, "ErrorSubscriptionNotFound", "The subscription was not found."
                )
                return
            lost = [s for s in live if s.missed or _overflowing(store, s, registry.queue_limit)]
            if lost:
                # The subscriptions lost events: say so, naming them, and forget them.
                for subscription in lost:
                    registry.remove(subscription.subscription_id)
                yield _missed_response(lost)
                return
            with registry.lock:
                # Under the lock a newer stream takes subscriptions over with: an event is read
                # (its position advanced) by the stream that carries its subscription, only.
                moved = [s for s in live if s.stream is not dropped]
                if not moved:
                    batches = [(s, *_pending(store, s, registry.page_size)) for s in live]
                    for subscription, _, position, _ in batches:
                        subscription.position = max(subscription.position, position)
                        subscription.last_seen = now
            if moved:
                yield _lost_response(
                    moved,
                    "ErrorNewEventStreamConnectionOpened",
                    "A new connection was opened for this subscription; this one is closed.",
                )
                return
            ready = [(s, events, position) for s, events, position, _ in batches if events]
            if ready or first or now - last_sent >= registry.keepalive_interval:
                yield _streaming_response(store, ready, "OK")
                first = False
                last_sent = now
                continue
            # Wake on a new event, the next keep-alive, the deadline, or (in slices) shutdown.
            wait = min(deadline - now, registry.keepalive_interval - (now - last_sent), 0.25)
            positions = {s.subscription_id: s.position for s in live}
            with store.changed:
                store.changed.wait_for(
                    functools.partial(_has_news, store, live, positions, dropped),
                    timeout=max(wait, 0.0),
                )
        yield _streaming_response(store, [], "Closed")
    finally:
        registry.unhang(address, dropped)
        with registry.lock:
            for subscription in live:
                subscription.connections -= 1
                subscription.last_seen = registry.clock()
                if subscription.stream is dropped:
                    subscription.stream = None


def _overflowing(store: MailStore, subscription: Subscription, limit: int) -> bool:
    """More than ``limit`` wanted events wait for this subscription."""
    waiting, _, more = _pending(store, subscription, limit)
    return more and len(waiting) >= limit


def _missed_response(lost: Sequence[Subscription]) -> etree._Element:
    return _lost_response(
        lost,
        "ErrorMissedNotificationEvents",
        "The subscription has missed events and must be recreated.",
    )


def _lost_response(lost: Sequence[Subscription], code: str, text: str) -> etree._Element:
    message = error_message("GetStreamingEventsResponseMessage", code, text)
    container = sub(message, m("ErrorSubscriptionIds"))
    for subscription in lost:
        sub(container, t("SubscriptionId"), subscription.subscription_id)
    return response("GetStreamingEvents", [message])


def _has_news(
    store: MailStore,
    live: Sequence[Subscription],
    positions: dict[str, int],
    dropped: threading.Event,
) -> bool:
    return dropped.is_set() or any(
        s.missed
        or s.stream is not dropped
        or store.last_event_seq(s.mailbox) > positions[s.subscription_id]
        for s in live
    )


def _streaming_response(
    store: MailStore,
    ready: Sequence[tuple[Subscription, list[Event], int]],
    status: str,
) -> etree._Element:
    message = success("GetStreamingEventsResponseMessage")
    if ready:
        container = sub(message, m("Notifications"))
        for subscription, events, position in ready:
            notification = sub(container, m("Notification"))
            _fill_notification(notification, store, subscription, events, position, None, None)
    sub(message, m("ConnectionStatus"), status)
    return response("GetStreamingEvents", [message])


# --- Unsubscribe -------------------------------------------------------------------------------


@operation("Unsubscribe")
def unsubscribe(ctx: OpContext, request: etree._Element) -> OpResult:
    """End a pull or streaming subscription."""
    registry = subscriptions(ctx.emulator)
    subscription_id = _text(request, m("SubscriptionId")) or ""
    found = registry.get(ctx.store, subscription_id, None)
    if found is None:
        return _error("Unsubscribe", "ErrorSubscriptionNotFound", "The subscription was not found.")
    if found.mailbox is not ctx.mailbox:
        return _error("Unsubscribe", "ErrorSubscriptionAccessDenied", "Access is denied.")
    registry.remove(subscription_id)
    return Reply(response("Unsubscribe", [success("UnsubscribeResponseMessage")]))
