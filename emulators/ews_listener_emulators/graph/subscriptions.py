"""Change notifications: ``/subscriptions`` on the mail store's event log (issue 12, point 6).

A subscription is a position in a mailbox's event log (``MailStore.events_since``), a folder
(or the whole mailbox) and a set of change types, as an EWS push or pull subscription is
(``ops/notifications.py``): mail delivered or changed through EWS notifies a Graph subscriber too.

What Microsoft documents (../shared/graph-samples/, the subscription and webhook pages):

- ``POST /subscriptions`` validates ``notificationUrl`` (and ``lifecycleNotificationUrl``) before
  it answers: a POST to ``{url}?validationToken=…`` with ``text/plain``; the receiver must answer
  200 ``text/plain`` with the URL-decoded token within 10 s, else 400 and no subscription
  (webhook-validation-request; the expected reply is prose only). ``https`` is required; plain
  ``http`` is accepted on a loopback host so tests need no certificate.
- ``expirationDateTime`` at most 10080 minutes ahead for messages (subscription resource type,
  "Maximum length of subscription per resource type"); past it, or in the past, 400.
- Notifications are POSTed as a ``changeNotificationCollection`` (webhook-change-notification);
  the receiver must answer 2xx within 3 s, else Graph retries with exponential back-off for up to
  4 hours. Every delay here is a ``NotificationSettings`` field that tests set near zero.
- Lifecycle notifications (``reauthorizationRequired``, ``subscriptionRemoved``, ``missed``) go to
  ``lifecycleNotificationUrl`` (webhook-lifecycle-notification). ``reauthorizationRequired`` is
  sent when the token the subscription was created (or last reauthorized) with stops verifying
  (``TokenServer.revoke``), and shortly before expiry; while the token is refused, change
  notifications wait, and ``POST /subscriptions/{id}/reauthorize`` with a valid token resumes them.
  ``missed`` is sent when notifications were dropped after the retry window. Lifecycle
  notifications are retried as change notifications are (then dropped without a word).
- An expired subscription sends nothing and is gone (404).

One background thread per Graph emulator (``Subscriptions.start`` / ``stop``) turns events into
notifications and hands each subscription's POST to a pool (``NotificationSettings.parallel``
threads), as Graph's delivery service notifies subscriptions independently: a slow receiver, or
the WAN's round trip, delays the notifications of its own subscription only. A subscription has
at most one POST in flight, so its notifications arrive in order.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from ews_listener_emulators.graph._contract import GraphAnswer, GraphError
from ews_listener_emulators.graph._handler import parse_path
from ews_listener_emulators.graph._ids import folder_for, to_rest_id
from ews_listener_emulators.graph.users import mailbox_for, user_id
from ews_listener_emulators.store import Event, Folder, Item, Mailbox

if TYPE_CHECKING:
    from ews_listener_emulators.graph.server import GraphEmulator

__all__ = [
    "CHANGE_NOTIFICATIONS_SCHEMA",
    "Delivery",
    "NotificationSettings",
    "Subscriptions",
    "route",
]

log = logging.getLogger("ews_listener_emulators.graph.subscriptions")

CHANGE_NOTIFICATIONS_SCHEMA = "#/components/schemas/microsoft.graph.changeNotificationCollection"
SUBSCRIPTION_SCHEMA = "#/components/schemas/microsoft.graph.subscription"
CHANGE_TYPES = ("created", "updated", "deleted")
#: Messages (Outlook mail): "10,080 minutes (under 7 days)".
MAX_MINUTES = 10080
_READ_ROLES = frozenset({"Mail.Read", "Mail.ReadWrite"})
_ACCESS_DENIED = "Access is denied. Check credentials and try again."
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class NotificationSettings:
    """Every delay of change notifications, in seconds (Graph's documented values by default)."""

    validation_timeout: float = 10.0  # the receiver's answer to the validationToken POST
    delivery_timeout: float = 3.0  # slower than this is a failed delivery (retried)
    first_retry: float = 60.0  # back-off: first_retry, then doubled ...
    max_retry: float = 3600.0  # ... up to this
    retry_for: float = 4 * 3600.0  # then the notifications are dropped and ``missed`` sent
    reauthorize_before: float = 600.0  # reauthorizationRequired this long before expiry
    tick: float = 0.25  # how often the delivery thread looks at tokens and expiry
    max_batch: int = 100  # notifications per POST (Graph batches those of one subscription)
    parallel: int = 16  # subscriptions notified at once (one POST in flight each)


@dataclass(frozen=True)
class Delivery:
    """One POST the emulator made to a receiver, for assertions."""

    kind: str  # "validation" | "notification" | "lifecycle"
    url: str
    status: int | None  # None: no answer (refused, timed out)
    duration: float
    body: Any  # the JSON sent (None for a validation request)
    schema_error: str | None = None  # set when the payload violates the OpenAPI description


@dataclass(frozen=True)
class SubscriptionCall:
    """A request to ``/subscriptions…`` as the HTTP layer hands it over."""

    method: str
    segments: tuple[str, ...]  # after "subscriptions"
    body: bytes
    claims: Mapping[str, Any]
    token: str
    base_url: str
    immutable_ids: bool


@dataclass
class _Outbox:
    """Notifications waiting for one receiver URL, and its back-off; guarded by
    ``Subscriptions._lock``."""

    url: str
    pending: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    failing_since: float | None = None
    next_attempt: float = 0.0

    def due(self, now: float) -> bool:
        """Whether there are entries to POST now (not backing off)."""
        return bool(self.pending) and self.next_attempt <= now

    def batch(self, now: float, size: int) -> list[dict[str, Any]]:
        """The next entries to POST, or none while backing off."""
        return list(self.pending[:size]) if self.next_attempt <= now else []

    def delivered(self, count: int) -> None:
        del self.pending[:count]
        self.attempts, self.failing_since, self.next_attempt = 0, None, 0.0

    def failed(self, now: float, settings: NotificationSettings) -> bool:
        """Back off exponentially; True when the retry window is over and the entries were
        dropped."""
        self.attempts += 1
        if self.failing_since is None:
            self.failing_since = now
        if now - self.failing_since >= settings.retry_for:
            self.pending.clear()
            self.attempts, self.failing_since, self.next_attempt = 0, None, 0.0
            return True
        delay = settings.first_retry * 2 ** (self.attempts - 1)
        self.next_attempt = now + min(delay, settings.max_retry)
        return False


@dataclass
class _Subscription:
    """One subscription; guarded by ``Subscriptions._lock``."""

    id: str
    resource: str
    change_type: str
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expiration: datetime
    application_id: str
    creator_id: str | None
    tenant_id: str
    mailbox: Mailbox
    folder: Folder | None  # None: every folder of the mailbox (users/{id}/messages)
    immutable_ids: bool
    token: str
    seq: int  # the mailbox's event log position already turned into notifications
    token_refused: bool = False
    warned_for: datetime | None = None  # the expiration a reauthorizationRequired was sent for
    outbox: _Outbox = field(init=False)

    def __post_init__(self) -> None:
        self.outbox = _Outbox(self.notification_url)

    @property
    def behind(self) -> bool:
        """Whether the mailbox has events no round has collected for this subscription (read
        without the store's lock: a length, and what comes after it is the next round's)."""
        return len(self.mailbox.events) > self.seq

    @property
    def change_types(self) -> frozenset[str]:
        return frozenset(part.strip() for part in self.change_type.split(","))


def route(method: str, segments: tuple[str, ...]) -> tuple[str, str]:
    """(OpenAPI template, operationId) of ``/subscriptions…``; 400 / 405 as the server does."""
    if len(segments) == 0:
        table = {"GET": "ListSubscription", "POST": "CreateSubscription"}
        template = "/subscriptions"
    elif len(segments) == 1:
        table = {"GET": "GetSubscription", "PATCH": "UpdateSubscription"}
        table["DELETE"] = "DeleteSubscription"
        template = "/subscriptions/{subscription-id}"
    elif len(segments) == 2 and segments[1].lower() == "reauthorize":
        table = {"POST": "reauthorize"}
        template = "/subscriptions/{subscription-id}/reauthorize"
    else:
        raise GraphError(400, "BadRequest", f"Resource not found for the segment '{segments[-1]}'.")
    operation = table.get(method)
    if operation is None:
        raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed.")
    return template, f"subscriptions.subscription.{operation}"


def _timestamp(moment: datetime) -> str:
    """Graph's seven fractional digits: ``2016-11-20T18:23:45.9356913Z``."""
    moment = moment.astimezone(UTC)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond:06d}0Z"


def _bad(message: str) -> GraphError:
    return GraphError(400, "InvalidRequest", message)


class Subscriptions:
    """The subscriptions of one Graph emulator and the thread that notifies their receivers."""

    def __init__(
        self, emulator: GraphEmulator, settings: NotificationSettings | None = None
    ) -> None:
        self.emulator = emulator
        self._settings = settings or NotificationSettings()
        self.deliveries: deque[Delivery] = deque(maxlen=10_000)
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._lock = threading.RLock()
        self._subscriptions: dict[str, _Subscription] = {}
        # By lifecycleNotificationUrl: kept after a subscription is gone (subscriptionRemoved).
        self._lifecycle: dict[str, _Outbox] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None  # deliveries, apart from the round
        self._in_flight: set[str] = set()  # subscriptions with a POST on the pool
        self._next_check = 0.0  # monotonic: when a round next checks tokens and expiry
        self._checked_revocations = 0  # the token server's revocations as of that check

    @property
    def settings(self) -> NotificationSettings:
        return self._settings

    @settings.setter
    def settings(self, settings: NotificationSettings) -> None:
        """New settings, the ``tick`` included, from the delivery thread's next look on (it is
        woken: a wait begun with a long tick would otherwise keep it)."""
        self._settings = settings
        with self.emulator.store.changed:
            self.emulator.store.changed.notify_all()

    # --- lifecycle of the delivery thread ------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.parallel, thread_name_prefix="graph-notify"
        )
        self._thread = threading.Thread(target=self._run, name="graph-notifications", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        with self.emulator.store.changed:
            self.emulator.store.changed.notify_all()
        thread.join(timeout=self.settings.delivery_timeout + 5)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    @property
    def running(self) -> bool:
        """Whether the delivery thread runs (between ``start`` and ``stop``)."""
        return self._thread is not None and self._thread.is_alive()

    def clear(self) -> None:
        """Forget every subscription and queued notification (``GraphEmulator.reset``)."""
        with self._lock:
            self._subscriptions.clear()
            self._lifecycle.clear()
        self.deliveries.clear()

    # --- Python API for tests and fault rules --------------------------------------------------

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._subscriptions)

    def remove(self, subscription_id: str) -> None:
        """Remove a subscription as Graph may at any time: ``subscriptionRemoved`` is sent."""
        with self._lock:
            sub = self._subscriptions.pop(subscription_id)
            self._queue_lifecycle(sub, "subscriptionRemoved")

    def miss(self, subscription_id: str) -> None:
        """Drop the notifications not yet delivered, and send ``missed``."""
        with self._lock:
            sub = self._subscriptions[subscription_id]
            sub.seq = self.emulator.store.last_event_seq(sub.mailbox)
            sub.outbox.pending.clear()
            self._queue_lifecycle(sub, "missed")

    def require_reauthorization(self, subscription_id: str) -> None:
        """Send ``reauthorizationRequired`` (as when the subscription's token stops verifying)."""
        with self._lock:
            self._queue_lifecycle(self._subscriptions[subscription_id], "reauthorizationRequired")

    # --- the HTTP API ----------------------------------------------------------------------------

    route = staticmethod(route)

    def serve(self, **request: Any) -> GraphAnswer:
        """Answer a request to ``/subscriptions…`` (``SubscriptionCall``'s fields, from the
        HTTP layer); a ``GraphError`` for an error answer."""
        call = SubscriptionCall(**request)
        roles = set(call.claims.get("roles") or ())
        if not roles & _READ_ROLES:
            raise GraphError(403, "ErrorAccessDenied", _ACCESS_DENIED)
        self._expire()
        if not call.segments:
            if call.method == "POST":
                return self._create(call)
            return self._list(call)
        sub = self._own(call, call.segments[0])
        if len(call.segments) == 2:  # reauthorize
            with self._lock:
                sub.token = call.token
                sub.token_refused = False
            with self.emulator.store.changed:
                self.emulator.store.changed.notify_all()  # what it held back goes out now
            return GraphAnswer(status=204)
        if call.method == "DELETE":
            with self._lock:
                self._subscriptions.pop(sub.id, None)
            return GraphAnswer(status=204)
        if call.method == "PATCH":
            return self._renew(call, sub)
        return GraphAnswer(json=self._json(call, sub, entity=True))

    def _own(self, call: SubscriptionCall, subscription_id: str) -> _Subscription:
        with self._lock:
            sub = self._subscriptions.get(subscription_id.lower())
        if sub is None or sub.application_id != self._app(call):
            raise GraphError(
                404, "ResourceNotFound", f"The object '{subscription_id}' doesn't exist."
            )
        return sub

    @staticmethod
    def _app(call: SubscriptionCall) -> str:
        return str(call.claims.get("appid") or call.claims.get("azp") or "")

    def _list(self, call: SubscriptionCall) -> GraphAnswer:
        with self._lock:
            own = [s for s in self._subscriptions.values() if s.application_id == self._app(call)]
        return GraphAnswer(
            json={
                "@odata.context": f"{call.base_url}/$metadata#subscriptions",
                "value": [self._json(call, s, entity=False) for s in own],
            }
        )

    def _create(self, call: SubscriptionCall) -> GraphAnswer:
        body = _json_body(call.body)
        for name in ("changeType", "notificationUrl", "resource", "expirationDateTime"):
            if not isinstance(body.get(name), str) or not body[name].strip():
                raise _bad(f"Property '{name}' is required and must be a string.")
        change_type = ",".join(part.strip() for part in body["changeType"].split(","))
        unknown = [part for part in change_type.split(",") if part not in CHANGE_TYPES]
        if unknown:
            raise _bad(f"Invalid changeType '{unknown[0]}'; expected created, updated or deleted.")
        mailbox, folder = self._resource(call, body["resource"])
        expiration = self._expiration(body["expirationDateTime"])
        urls = [_notification_url(body["notificationUrl"], "notificationUrl")]
        lifecycle = body.get("lifecycleNotificationUrl")
        if lifecycle is not None:
            urls.append(_notification_url(lifecycle, "lifecycleNotificationUrl"))
        client_state = body.get("clientState")
        if client_state is not None and (
            not isinstance(client_state, str) or len(client_state) > 128
        ):
            raise _bad("clientState must be a string of at most 128 characters.")
        for url in urls:  # both URLs are validated before the subscription exists
            self._validate_url(url)
        sub = _Subscription(
            id=str(uuid.uuid4()),
            resource=body["resource"],
            change_type=change_type,
            notification_url=urls[0],
            lifecycle_url=lifecycle,
            client_state=client_state,
            expiration=expiration,
            application_id=self._app(call),
            creator_id=call.claims.get("oid"),
            tenant_id=str(call.claims.get("tid") or ""),
            mailbox=mailbox,
            folder=folder,
            immutable_ids=call.immutable_ids,
            token=call.token,
            seq=self.emulator.store.last_event_seq(mailbox),
        )
        with self._lock:
            self._subscriptions[sub.id] = sub
        answer = GraphAnswer(status=201, json=self._json(call, sub, entity=True))
        answer.json["latestSupportedTlsVersion"] = body.get("latestSupportedTlsVersion") or "v1_2"
        return answer

    def _renew(self, call: SubscriptionCall, sub: _Subscription) -> GraphAnswer:
        body = _json_body(call.body)
        other = sorted(set(body) - {"expirationDateTime"})
        if other:
            raise _bad(f"Only expirationDateTime can be updated, not '{other[0]}'.")
        if not isinstance(body.get("expirationDateTime"), str):
            raise _bad("Property 'expirationDateTime' is required and must be a string.")
        expiration = self._expiration(body["expirationDateTime"])
        with self._lock:
            sub.expiration = expiration
        return GraphAnswer(json=self._json(call, sub, entity=True))

    def _resource(self, call: SubscriptionCall, resource: str) -> tuple[Mailbox, Folder | None]:
        """``users/{id}/messages``, ``users/{id}/mailFolders('inbox')/messages``,
        ``users/{id}/mailFolders/{id}/messages``, with or without a leading ``/``."""
        segments = parse_path("/v1.0/" + resource.strip().lstrip("/")) or ()
        lowered = tuple(s.lower() for s in segments)
        if lowered[:1] == ("me",):
            raise _bad("/me request is only valid with delegated authentication flow.")
        shape_ok = lowered[:1] == ("users",) and (
            (len(lowered) == 3 and lowered[2] == "messages")
            or (len(lowered) == 5 and lowered[2] == "mailfolders" and lowered[4] == "messages")
        )
        if not shape_ok:
            raise _bad(f"Unsupported resource '{resource}' for a mail subscription.")
        mailbox = mailbox_for(self.emulator.store, segments[1])
        if mailbox is None:
            raise GraphError(
                404, "ErrorInvalidUser", f"The requested user '{segments[1]}' is invalid."
            )
        if not self.emulator.scopes.allowed(self._app(call) or None, mailbox.address):
            raise GraphError(403, "ErrorAccessDenied", _ACCESS_DENIED)
        if len(segments) == 3:
            return mailbox, None
        folder = folder_for(self.emulator.store, mailbox, segments[3])
        if folder is None:
            raise GraphError(
                404, "ErrorItemNotFound", "The specified object was not found in the store."
            )
        return mailbox, folder

    def _expiration(self, text: str) -> datetime:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise _bad(f"Invalid expirationDateTime '{text}'.") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        now = self.clock()
        if moment <= now:
            raise _bad("Subscription expiration must be in the future.")
        if moment > now + timedelta(minutes=MAX_MINUTES):
            raise GraphError(
                400,
                "ExtensionError",
                "Operation: Create; Exception: [Status Code: BadRequest; Reason: Subscription "
                f"expiration can only be {MAX_MINUTES} minutes in the future.]",
            )
        return moment

    def _json(self, call: SubscriptionCall, sub: _Subscription, *, entity: bool) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if entity:
            body["@odata.context"] = f"{call.base_url}/$metadata#subscriptions/$entity"
        body.update(
            {
                "id": sub.id,
                "resource": sub.resource,
                "applicationId": sub.application_id,
                "changeType": sub.change_type,
                "clientState": sub.client_state,
                "notificationUrl": sub.notification_url,
                "lifecycleNotificationUrl": sub.lifecycle_url,
                "expirationDateTime": _timestamp(sub.expiration),
                "creatorId": sub.creator_id,
                "includeResourceData": False,
                "latestSupportedTlsVersion": "v1_2",
                "encryptionCertificate": None,
                "encryptionCertificateId": None,
                "notificationQueryOptions": None,
                "notificationUrlAppId": None,
            }
        )
        return body

    # --- outgoing requests ---------------------------------------------------------------------

    def _validate_url(self, url: str) -> None:
        # Graph's tokens hold spaces and colons: the receiver must URL-decode the query.
        token = (
            "Validation: Testing client application reachability for subscription Request-Id: "
            f"{uuid.uuid4()}"
        )
        target = f"{url}{'&' if '?' in url else '?'}validationToken={quote(token, safe='')}"
        status, content_type, answer, duration = self._post(
            target, b"", "text/plain; charset=utf-8", self.settings.validation_timeout
        )
        self.deliveries.append(Delivery("validation", url, status, duration, None))
        if status is None and duration >= self.settings.validation_timeout:
            raise _bad(
                "Subscription validation request failed. Notification endpoint must respond "
                f"with 200 OK to validation request within {self.settings.validation_timeout:g} "
                "seconds."
            )
        if status != 200 or not content_type.lower().startswith("text/plain"):
            raise _bad(
                "Subscription validation request failed. Notification endpoint must respond "
                f"with 200 OK and text/plain to validation request (got {status})."
            )
        if answer.decode("utf-8", "replace") != token:
            raise _bad(
                "Subscription validation request failed. Response must exactly match "
                "validationToken query parameter."
            )

    def _post(
        self, url: str, data: bytes, content_type: str, timeout: float
    ) -> tuple[int | None, str, bytes, float]:
        """(status or None, content type, body, seconds) of one POST; never raises."""
        # S310: the scheme is http or https, checked by _notification_url at creation.
        request = urllib.request.Request(  # noqa: S310
            url, data=data, method="POST", headers={"Content-Type": content_type}
        )
        context: ssl.SSLContext | None = None
        if url.startswith("https:"):
            context = ssl.create_default_context()  # the system's CAs and the emulator's
            if self.emulator.ca is not None:
                context.load_verify_locations(cafile=str(self.emulator.ca.ca_file))
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=context) as answer:  # noqa: S310
                body = answer.read()
                status, kind = answer.status, answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), b"", time.perf_counter() - started
        except (OSError, ValueError) as exc:
            log.info("Graph notification POST to %s failed: %s", url, exc)
            return None, "", b"", max(time.perf_counter() - started, 0.0)
        duration = time.perf_counter() - started
        if duration > timeout:  # answered, but too late: Graph counts it as failed
            return None, kind, body, duration
        return status, kind, body, duration

    def _send(self, kind: str, url: str, entries: list[dict[str, Any]]) -> bool:
        payload = {"value": entries}
        schema_error = None
        if self.emulator.schema is not None:
            schema_error = self.emulator.schema.validate(payload, CHANGE_NOTIFICATIONS_SCHEMA)
            if schema_error is not None:
                log.warning("Graph emulator: invalid %s payload: %s", kind, schema_error)
        data = json.dumps(payload).encode()
        status, _, _, duration = self._post(
            url, data, "application/json; charset=utf-8", self.settings.delivery_timeout
        )
        self.deliveries.append(Delivery(kind, url, status, duration, payload, schema_error))
        return status is not None and 200 <= status < 300

    # --- the delivery thread -------------------------------------------------------------------

    def _run(self) -> None:
        store = self.emulator.store
        while not self._stopping.is_set():
            settings = self._settings
            with store.changed:
                # A change notified while the last round ran woke nobody: ``_news`` finds it
                # before the wait, which otherwise held it back until the tick. New settings end
                # the wait too (``wait_for`` keeps the deadline of the tick it began with).
                store.changed.wait_for(functools.partial(self._news, settings), settings.tick)
            if self._stopping.is_set():
                return
            try:
                self._round()
            except Exception:  # the thread must outlive one bad round
                log.exception("Graph emulator: notification round failed")

    def _round(self) -> None:
        self._expire()
        now = time.monotonic()
        with self._lock:
            subs = list(self._subscriptions.values())
        if self._checks_due(now):
            for sub in subs:
                self._check(sub)
        for sub in subs:
            # A look without the locks first: a round is woken by every change of the store,
            # and most find news in few mailboxes (a burst to 200 of 1,000 mailboxes made this
            # loop, with the token checks, the emulator's largest cost).
            if sub.behind:
                with self._lock:
                    if not sub.token_refused:
                        self._collect(sub)
        with self._lock:
            lifecycle = list(self._lifecycle.values())
        for outbox in lifecycle:
            self._deliver("lifecycle", outbox, now)
        with self._lock:
            due = [s for s in subs if not s.token_refused and s.outbox.due(now)]
        pool = self._pool
        if pool is None:
            for sub in due:
                self._notify(sub, now)
            return
        for sub in due:
            with self._lock:
                if sub.id in self._in_flight:
                    continue  # one POST in flight a subscription: its notifications in order
                self._in_flight.add(sub.id)
            pool.submit(self._notify_apart, sub, now)

    def _news(self, settings: NotificationSettings) -> bool:
        """Whether a round has something to do now: events no round has collected, entries
        due to be posted, a revocation not checked yet, settings other than the wait's. Called
        with the store's lock held, so without ``_lock`` (a round takes ``_lock``, then the
        store's): it only reads, and what it misses the tick finds."""
        if self._stopping.is_set() or self._settings is not settings:
            return True
        if self._revocations() != self._checked_revocations:
            return True
        now = time.monotonic()
        if any(outbox.due(now) for outbox in list(self._lifecycle.values())):
            return True
        return any(
            not sub.token_refused
            and (sub.behind or (sub.outbox.due(now) and sub.id not in self._in_flight))
            for sub in list(self._subscriptions.values())
        )

    def _revocations(self) -> int:
        return getattr(self.emulator.token_server, "revocations", 0)

    def _checks_due(self, now: float) -> bool:
        """Whether this round checks every subscription's token and expiry: once a ``tick``
        (what the rounds of an idle emulator did anyway), and at once after the token server
        revoked tokens, so that no change notification follows a revocation."""
        revocations = self._revocations()
        if now < self._next_check and revocations == self._checked_revocations:
            return False
        self._next_check = now + self.settings.tick
        self._checked_revocations = revocations
        return True

    def _notify_apart(self, sub: _Subscription, now: float) -> None:
        """``_notify`` on a pool thread; the next round may notify ``sub`` again after it."""
        try:
            self._notify(sub, now)
        except Exception:
            log.exception("Graph emulator: notification delivery failed")
        finally:
            with self._lock:
                self._in_flight.discard(sub.id)
            with self.emulator.store.changed:
                self.emulator.store.changed.notify_all()  # what waits for it: the next round

    def _notify(self, sub: _Subscription, now: float) -> None:
        """POST the next batch of ``sub``'s notifications (or what a fault puts in its place)."""
        if self._faulted(sub):
            return
        # True when the retry window ended and the notifications were dropped.
        if self._unreachable(sub):
            dropped = self._undelivered("notification", sub.outbox)
        else:
            dropped = self._deliver("notification", sub.outbox, now)
        if dropped:
            with self._lock:
                self._queue_lifecycle(sub, "missed")

    def _expire(self) -> None:
        now = self.clock()
        with self._lock:
            for sub in [s for s in self._subscriptions.values() if s.expiration <= now]:
                del self._subscriptions[sub.id]  # expired: nothing more is sent

    def _check(self, sub: _Subscription) -> None:
        """reauthorizationRequired: the token stopped verifying, or expiry is near."""
        verifier = self.emulator.token_server
        refused = False
        if verifier is not None and not sub.token_refused:
            try:
                verifier.verify(sub.token, audience=self.emulator.audiences)
            except Exception:
                refused = True
        with self._lock:
            if refused:
                sub.token_refused = True
                self._queue_lifecycle(sub, "reauthorizationRequired")
            near = sub.expiration - timedelta(seconds=self.settings.reauthorize_before)
            if self.clock() >= near and sub.warned_for != sub.expiration:
                sub.warned_for = sub.expiration
                self._queue_lifecycle(sub, "reauthorizationRequired")

    def _faulted(self, sub: _Subscription) -> bool:
        """Whether a Graph fault rule (``graph/faults.py``: ``subscription_removed``,
        ``notifications_missed``) replaces this delivery with a lifecycle notification; asked
        when a batch is about to go out, as ``GraphFaults.take`` expects."""
        take = getattr(getattr(self.emulator, "faults", None), "take", None)
        if take is None:
            return False
        if take("subscription_removed", sub.mailbox.address):
            with self._lock:
                if self._subscriptions.pop(sub.id, None) is not None:
                    sub.outbox.pending.clear()
                    self._queue_lifecycle(sub, "subscriptionRemoved")
            return True
        if take("notifications_missed", sub.mailbox.address):
            with self._lock:
                sub.outbox.pending.clear()
                self._queue_lifecycle(sub, "missed")
            return True
        return False

    def _unreachable(self, sub: _Subscription) -> bool:
        """Whether a ``receiver_unreachable`` rule makes this delivery fail."""
        take = getattr(getattr(self.emulator, "faults", None), "take", None)
        return take is not None and bool(take("receiver_unreachable", sub.mailbox.address))

    def _undelivered(self, kind: str, outbox: _Outbox) -> bool:
        """A delivery that got no answer (as a refused connection): recorded, backed off."""
        with self._lock:
            batch = outbox.batch(time.monotonic(), self.settings.max_batch)
        if not batch:
            return False
        self.deliveries.append(Delivery(kind, outbox.url, None, 0.0, {"value": batch}))
        with self._lock:
            return outbox.failed(time.monotonic(), self.settings)

    def _queue_lifecycle(self, sub: _Subscription, event: str) -> None:
        if sub.lifecycle_url is None:
            return
        entry: dict[str, Any] = {
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": _timestamp(sub.expiration),
            "tenantId": sub.tenant_id,
            "clientState": sub.client_state,
            "lifecycleEvent": event,
        }
        outbox = self._lifecycle.setdefault(sub.lifecycle_url, _Outbox(sub.lifecycle_url))
        outbox.pending.append(entry)
        with self.emulator.store.changed:
            self.emulator.store.changed.notify_all()

    def _collect(self, sub: _Subscription) -> None:
        """Turn the mailbox's new events into pending notifications (under ``_lock``)."""
        store = self.emulator.store
        with store.lock:
            events = store.events_since(sub.mailbox, sub.seq)
            sub.seq += len(events)
            for event in events:
                for change, item_id in self._changes(sub, event):
                    if change in sub.change_types:
                        sub.outbox.pending.append(self._entry(sub, change, item_id))

    def _changes(self, sub: _Subscription, event: Event) -> list[tuple[str, str]]:
        """(changeType, EWS item id) for ``event`` as the subscription's folder sees it."""
        if event.is_folder or event.item_id is None or event.kind == "NewMail":
            return []
        here = sub.folder.folder_id if sub.folder is not None else None

        def inside(folder_id: str | None) -> bool:
            return here is None or folder_id == here

        kind = {"Created": "created", "Copied": "created", "Modified": "updated"}.get(event.kind)
        if kind is not None:
            return [(kind, event.item_id)] if inside(event.folder_id) else []
        if event.kind == "Deleted":
            return [("deleted", event.item_id)] if inside(event.folder_id) else []
        # Moved: deleted from the source folder, created in the destination.
        out: list[tuple[str, str]] = []
        if event.old_item_id is not None and inside(event.old_folder_id):
            out.append(("deleted", event.old_item_id))
        if inside(event.folder_id):
            out.append(("created", event.item_id))
        return out

    def _entry(self, sub: _Subscription, change: str, ews_id: str) -> dict[str, Any]:
        store = self.emulator.store
        item: Item | None = store.item(sub.mailbox, ews_id) or store.former(sub.mailbox, ews_id)
        graph_id = (
            item.immutable_id if sub.immutable_ids and item is not None else to_rest_id(ews_id)
        )
        owner = f"{user_id(sub.mailbox)}@{sub.tenant_id}"
        data: dict[str, Any] = {
            "@odata.type": "#Microsoft.Graph.Message",
            "@odata.id": f"Users/{owner}/Messages/{graph_id}",
        }
        if item is not None:
            data["@odata.etag"] = f'W/"{item.change_key}"'
        data["id"] = graph_id
        return {
            # Each notification has an id of its own (webhook-change-notification: "lsgTZMr9KwAAA").
            "id": secrets.token_urlsafe(10)[:13],
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": _timestamp(sub.expiration),
            "changeType": change,
            # Lower case here, capitalised in resourceData's @odata.id, as the documented payload
            # (webhook-change-notification) writes them.
            "resource": f"users/{owner}/messages/{graph_id}",
            "resourceData": data,
            "clientState": sub.client_state,
            "tenantId": sub.tenant_id,
        }

    def _deliver(self, kind: str, outbox: _Outbox, now: float) -> bool:
        """POST the outbox's next batch; True when a failure ended the retry window (the
        entries were dropped)."""
        with self._lock:
            batch = outbox.batch(now, self.settings.max_batch)
        if not batch:
            return False
        ok = self._send(kind, outbox.url, batch)
        with self._lock:
            if ok:
                outbox.delivered(len(batch))
                return False
            return outbox.failed(time.monotonic(), self.settings)


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise GraphError(400, "BadRequest", f"Unable to read JSON request payload: {exc}") from None
    if not isinstance(body, dict):
        raise GraphError(400, "BadRequest", "The request body must be a JSON object.")
    return body


def _notification_url(value: object, name: str) -> str:
    """https, or http on a loopback host (for tests without a certificate)."""
    if not isinstance(value, str):
        raise _bad(f"Property '{name}' must be a string.")
    parts = urlsplit(value)
    host = (parts.hostname or "").lower()
    loopback = host in _LOOPBACK
    if not loopback:
        try:
            loopback = ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if parts.scheme == "https" and host:
        return value
    if parts.scheme == "http" and loopback:
        return value
    raise _bad(f"The {name} must be an https URL, got '{value}'.")
