"""Graph change notifications that wake the poll (issue 15): ``GraphWebhooks``.

One subscription per watched folder (``POST /subscriptions``, changeType ``created``, resource
``users/{address}/mailFolders('{id}')/messages``), pointing both ``notificationUrl`` and
``lifecycleNotificationUrl`` at ``[notifications.graph] public_url``, which ends at this service's
``/notifications/graph`` (directly, or through a reverse proxy). What Microsoft documents, and
what each part here answers (../shared/graph-samples/, the webhook and lifecycle pages):

- **Validation**: Graph POSTs ``?validationToken=…`` to both URLs before ``POST /subscriptions``
  answers; the receiver echoes the URL-decoded token, ``200 text/plain``, within 10 s.
- **Notifications** must get a 2xx within 3 s, else Graph retries for up to 4 hours and then
  drops them (``missed``). The receiver checks ``clientState`` with a constant-time compare
  (wrong: 403, counted, nothing triggered), answers 202, and only then asks for polls.
- **Lifecycle**: ``subscriptionRemoved`` → subscribe again and poll; ``reauthorizationRequired``
  → ``POST /subscriptions/{id}/reauthorize`` (a 404 subscribes again); ``missed`` → poll.
- **Expiry**: a subscription lives ``lifetime_minutes``; it is renewed (``PATCH
  expirationDateTime``) ``renew_before_minutes`` before that; a 404 on renewal subscribes again.
- **Restart**: when a watch is added (all of them at start in one process; with several
  replicas, a mailbox's when this replica acquires its lease), the app's subscriptions to the
  same resource and URL are adopted (``GET /subscriptions``), so a killed owner leaves no orphan
  that keeps notifying; ``stop()`` and ``remove()`` delete them. Only a watch's own resource is
  ever adopted, and only by the replica that holds its lease: never another replica's live one.
- **Routing**: each subscription's ``notificationUrl`` is ``public_url`` with ``?mailbox=<name>``,
  so any replica (behind one Service) can tell whose folder changed without holding the
  subscription; once ``clientState`` checks out, it wakes that mailbox (``wake``: with several
  replicas, ``LeaseManager.forward`` passes it to the owner over PostgreSQL NOTIFY).

A notification only asks for a poll; the delta link stays the truth, so a lost, late, repeated
or forged notification costs latency or one poll, never a message. A watch that cannot subscribe
is ``degraded`` (its mailbox is polled at its configured interval) and is retried with back-off.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog

from listener.errors import Gone
from listener.notify import (
    REMOVE_WAIT,
    ChannelState,
    ChannelStatus,
    HttpAnswer,
    HttpRequest,
    NotifyHooks,
    Receiver,
    Relay,
    Wake,
    Watch,
    bounded,
)

if TYPE_CHECKING:
    from listener.sources.graph.factory import GraphSources

__all__ = ["PATH", "GraphWebhooks"]

log = structlog.get_logger("listener.sources.graph.notifications")

#: Where the service's HTTP server receives Graph's POSTs (the end of ``public_url``).
PATH = "/notifications/graph"
KIND = "graph_webhook"
# The lifecycle events of webhook-lifecycle-notification this channel acts on.
LIFECYCLE_EVENTS = frozenset({"missed", "subscriptionRemoved", "reauthorizationRequired"})
#: Longest wait between two looks at the subscriptions (renewals are due hours apart).
_TICK = 30.0


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def _parse(text: object, fallback: datetime) -> datetime:
    if not isinstance(text, str):
        return fallback
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return fallback
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass
class _Watched:
    """One watched folder's subscription; guarded by ``GraphWebhooks._lock``."""

    watch: Watch
    source: Any  # its GraphMailSource: the folder id
    client: Any  # its GraphClient: the mailbox's gate, token and pool
    subscription: str | None = None
    expires: datetime | None = None
    renew_at: datetime | None = None
    state: ChannelState | None = None  # None: not tried yet
    reason: str = "not subscribed yet"
    last_event: float | None = None
    failures: int = 0
    next_attempt: float = 0.0  # time.monotonic() of the next (re)subscription attempt
    ever_connected: bool = False
    removed: bool = False  # no longer watched (``GraphWebhooks.remove``)

    @property
    def name(self) -> str:
        return self.watch.name

    @property
    def address(self) -> str:
        return str(self.watch.mailbox.address)


class GraphWebhooks:
    """The ``NotificationChannel`` of Graph mailboxes (``SourceFactory.notifications``)."""

    kind = KIND

    def __init__(
        self,
        factory: GraphSources,
        watches: Sequence[Watch],
        wake: Wake,
        hooks: NotifyHooks,
        config: Any,  # GraphNotificationsConfig
        *,
        retry: float = 10.0,
        retry_max: float = 300.0,
        tick: float = _TICK,
    ) -> None:
        self._wake = wake
        # Several replicas: where a lifecycle notification for a subscription another replica
        # holds goes (``LeaseManager.forward_lifecycle``); alone, such a one only wakes a poll.
        self.relay: Relay | None = None
        self._hooks = hooks
        self._config = config
        self._retry = retry
        self._retry_max = retry_max
        self._tick = tick
        self._lifetime = timedelta(minutes=config.lifetime_minutes)
        self._renew_before = timedelta(minutes=config.renew_before_minutes)
        self._url = str(config.public_url)
        self._factory = factory
        # Mailboxes whose notifications this receiver accepts by name (``?mailbox=``): every
        # webhook mailbox of the configuration, watched here or by another replica.
        self._known: frozenset[str] = frozenset(getattr(factory, "webhook_names", lambda: ())())
        # Replaced, never changed in place: the thread iterates a snapshot.
        self._watched: dict[str, _Watched] = {w.name: self._new(w) for w in watches}
        self._fresh: set[str] = set(self._watched)  # to adopt leftovers for, then subscribe
        self._by_subscription: dict[str, str] = {}  # subscription id (lower case) → mailbox name
        self._lifecycle: list[tuple[str, str, str]] = []  # (mailbox, subscription id, event)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._secret: bytes | None = None

    def __repr__(self) -> str:
        return f"GraphWebhooks({len(self._watched)} watch(es), url={self._url!r})"

    def _new(self, watch: Watch) -> _Watched:
        return _Watched(
            watch,
            self._factory.source(watch.name, watch.mailbox),
            self._factory.client(watch.mailbox),
        )

    def url_for(self, name: str) -> str:
        """The ``notificationUrl`` of ``name``'s subscription: ``public_url?mailbox=<name>``."""
        joiner = "&" if "?" in self._url else "?"
        return f"{self._url}{joiner}mailbox={quote(name, safe='')}"

    # --- NotificationChannel ---------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="graph-webhooks", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing, then delete the subscriptions (best effort: one that stays expires on
        its own, and the next start adopts it)."""
        thread, self._thread = self._thread, None
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if thread is not None:
            thread.join(timeout=30)
        for watched in list(self._watched.values()):
            self._unsubscribe(watched)
            self._set(watched, ChannelState.OFF, "stopped")

    def add(self, watch: Watch) -> None:
        """Watch one more folder: adopt its leftover subscription or create one, in the
        background (a poll follows). Idempotent; safe from any thread."""
        with self._changed:
            if watch.name in self._watched:
                return
            self._watched = {**self._watched, watch.name: self._new(watch)}
            self._fresh.add(watch.name)
            self._changed.notify_all()

    def remove(self, name: str, *, unsubscribe: bool = True) -> None:
        """Stop watching ``name``: delete its subscription now (waiting up to ``REMOVE_WAIT``
        seconds, so it is normally gone before the lease is released), or with
        ``unsubscribe=False`` (the lease was lost: the next owner may have adopted it) only
        forget it. Idempotent."""
        with self._changed:
            watched = self._watched.get(name)
            if watched is None:
                return
            self._watched = {n: w for n, w in self._watched.items() if n != name}
            self._fresh.discard(name)
            watched.removed = True
            if not unsubscribe and watched.subscription is not None:
                self._by_subscription.pop(watched.subscription.lower(), None)
                watched.subscription = None
        if unsubscribe and not bounded(
            lambda: self._unsubscribe(watched), REMOVE_WAIT, "graph-unsubscribe"
        ):
            # Graph is slow: the lease thread must go on renewing. The next owner adopts the
            # subscription if it is still there when it acquires the lease.
            log.warning("graph.unsubscribe_slow", mailbox=name, waited=REMOVE_WAIT)
        self._set(watched, ChannelState.OFF, "not watched by this replica")

    def _unsubscribe(self, watched: _Watched) -> None:
        with self._lock:
            subscription, watched.subscription = watched.subscription, None
            if subscription is not None:
                self._by_subscription.pop(subscription.lower(), None)
        if subscription is None:
            return
        try:
            self._request(watched, "deleteSubscription", "DELETE", f"subscriptions/{subscription}")
        except Exception as e:
            log.info("graph.unsubscribe_failed", mailbox=watched.name, error=str(e))

    def status(self) -> Mapping[str, ChannelStatus]:
        with self._lock:
            return {
                name: ChannelStatus(
                    state=w.state or ChannelState.DEGRADED, reason=w.reason, last_event=w.last_event
                )
                for name, w in self._watched.items()
            }

    def routes(self) -> Mapping[str, Receiver]:
        return {PATH: self.receive}

    # --- the receiver (runs in the HTTP server's request thread) --------------------------------

    def _client_state(self) -> bytes:
        if self._secret is None:
            self._secret = self._config.client_state.read().get_secret_value().encode()
        return self._secret

    def receive(self, request: HttpRequest) -> HttpAnswer:
        """A POST from Graph: the validation handshake, change or lifecycle notifications."""
        token = request.query.get("validationToken")
        if token is not None:
            # parse_qs already URL-decoded it, as Graph requires the echo to be.
            return HttpAnswer(status=200, body=token.encode(), content_type="text/plain")
        try:
            entries = json.loads(request.body)["value"]
            if not isinstance(entries, list):
                raise TypeError("value is not a list")
        except (ValueError, KeyError, TypeError):
            self._hooks.rejected(self.kind, "unreadable")
            return HttpAnswer(status=400, body=b"not a changeNotificationCollection")
        secret = self._client_state()
        woken: list[str] = []
        lifecycle: list[tuple[str, str, str]] = []
        relayed: list[tuple[str, str, str]] = []
        refused = 0
        for entry in entries:
            given = entry.get("clientState") if isinstance(entry, dict) else None
            if not isinstance(given, str) or not hmac.compare_digest(given.encode(), secret):
                refused += 1
                self._hooks.rejected(self.kind, "client_state")
                continue
            subscription = str(entry.get("subscriptionId") or "").lower()
            with self._lock:
                name = self._by_subscription.get(subscription)
                held = name is not None
            if name is None and request.query.get("mailbox") in self._known:
                # Another replica's subscription (or one just made here): the clientState says
                # it is ours, the URL says whose folder; ``wake`` reaches the owner.
                name = request.query["mailbox"]
            if name is None:
                # Ours (the clientState says so), but not one we hold now: one just replaced,
                # or one created a moment ago whose id is not recorded yet (a poll follows
                # every subscribe, so nothing waits for this one).
                self._hooks.rejected(self.kind, "unknown_subscription")
                continue
            event = entry.get("lifecycleEvent")
            if isinstance(event, str) and held:
                lifecycle.append((name, subscription, event))
            elif isinstance(event, str) and event in LIFECYCLE_EVENTS and self.relay is not None:
                # Another replica's subscription: the owner acts on it (recreates a removed
                # one at once rather than at its next renewal, hours away).
                relayed.append((name, subscription, event))
            else:
                woken.append(name)
        if entries and refused == len(entries):
            log.warning("graph.notification_refused", reason="clientState mismatch", count=refused)
            return HttpAnswer(status=403)

        def after() -> None:
            now = time.monotonic()
            for name in woken:
                with self._lock:
                    watched = self._watched.get(name)
                    if watched is not None:
                        watched.last_event = now
                self._hooks.event(self.kind, name)
                self._wake(name)
            if lifecycle:
                with self._changed:
                    self._lifecycle.extend(lifecycle)
                    self._changed.notify_all()
            relay = self.relay
            for name, subscription, event in relayed:
                log.info("graph.lifecycle_relayed", mailbox=name, lifecycle_event=event)
                if relay is not None:
                    relay(name, subscription, event)

        return HttpAnswer(status=202, after=after)

    def lifecycle(self, name: str, subscription: str, event: str) -> None:
        """A lifecycle notification another replica received and passed on: handled as if it
        had come here when this channel holds that subscription, else a poll of ``name``."""
        subscription = subscription.lower()
        with self._lock:
            held = self._by_subscription.get(subscription) == name
        if not held or event not in LIFECYCLE_EVENTS:
            self._wake(name)
            return
        with self._changed:
            self._lifecycle.append((name, subscription, event))
            self._changed.notify_all()

    # --- the subscription thread -----------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._changed:
                events, self._lifecycle = self._lifecycle, []
                fresh, self._fresh = [self._watched[n] for n in sorted(self._fresh)], set()
            if fresh:
                try:
                    self._adopt(fresh)
                except Exception:
                    log.warning("graph.adopt_failed", exc_info=True)
            for name, subscription, event in events:
                found = self._watched.get(name)
                if found is not None:
                    self._on_lifecycle(found, subscription, event)
            for watched in list(self._watched.values()):
                if self._stopping.is_set():
                    return
                with self._lock:
                    if watched.name in self._fresh:
                        continue  # added during this round: adopted first, at the next
                try:
                    self._tend(watched)
                except Exception as e:  # the thread outlives one bad round
                    self._failed(watched, f"unexpected {type(e).__name__}: {e}")
                    log.error(
                        "graph.subscription_round_failed", mailbox=watched.name, exc_info=True
                    )
            with self._changed:
                if not self._lifecycle and not self._fresh and not self._stopping.is_set():
                    self._changed.wait(self._next_wait())

    def _next_wait(self) -> float:
        """Seconds until something is due (under ``_lock``)."""
        now, wall = time.monotonic(), datetime.now(UTC)
        wait = self._tick
        for w in self._watched.values():
            if w.subscription is None:
                wait = min(wait, w.next_attempt - now)
            elif w.renew_at is not None:
                wait = min(wait, (w.renew_at - wall).total_seconds())
        return max(0.05, wait)

    def _tend(self, watched: _Watched) -> None:
        with self._lock:
            subscription, expires, renew_at = (
                watched.subscription,
                watched.expires,
                watched.renew_at,
            )
            due = watched.next_attempt <= time.monotonic()
        now = datetime.now(UTC)
        if subscription is None:
            if due:
                self._subscribe(watched)
        elif expires is not None and now >= expires:
            self._forget(watched, subscription, "expired (renewals failed)")
        elif renew_at is not None and now >= renew_at:
            self._renew(watched, subscription)

    def _request(self, watched: _Watched, operation: str, method: str, url: str, **kw: Any) -> Any:
        return watched.client.request(watched.address, operation, method, url, **kw)

    def _resource(self, watched: _Watched) -> str:
        folder = watched.source.watched_folder_id()
        return f"users/{watched.address}/mailFolders('{folder}')/messages"

    def _subscribe(self, watched: _Watched) -> None:
        try:
            resource = self._resource(watched)
            expires = datetime.now(UTC) + self._lifetime
            made = self._request(
                watched,
                "createSubscription",
                "POST",
                "subscriptions",
                json_body={
                    "changeType": "created",
                    "notificationUrl": self.url_for(watched.name),
                    "lifecycleNotificationUrl": self.url_for(watched.name),
                    "resource": resource,
                    "expirationDateTime": _timestamp(expires),
                    "clientState": self._client_state().decode(),
                    "latestSupportedTlsVersion": "v1_2",
                },
            )
        except Exception as e:
            self._failed(watched, f"cannot subscribe: {e}")
            return
        if not self._connected(
            watched, str(made["id"]), _parse(made.get("expirationDateTime"), expires)
        ):
            return
        # Mail that arrived before the subscription existed (or while it was gone) is found by
        # one poll, a catch-up (behind the polls notifications ask for, listener.scheduler);
        # from now on notifications cover the folder.
        self._wake(watched.name, urgent=False)

    def _renew(self, watched: _Watched, subscription: str) -> None:
        expires = datetime.now(UTC) + self._lifetime
        try:
            renewed = self._request(
                watched,
                "updateSubscription",
                "PATCH",
                f"subscriptions/{subscription}",
                json_body={"expirationDateTime": _timestamp(expires)},
            )
        except Gone:
            self._forget(watched, subscription, "expired or removed before its renewal")
            return
        except Exception as e:
            # Still alive until it expires: try again later (not at once, or the round would
            # spin), and subscribe again only once it is gone.
            with self._lock:
                watched.failures += 1
                delay = min(self._retry * 2 ** (watched.failures - 1), self._retry_max)
                watched.renew_at = datetime.now(UTC) + timedelta(seconds=delay)
            log.warning("graph.renewal_failed", mailbox=watched.name, error=str(e), retry_in=delay)
            return
        with self._lock:
            watched.expires = _parse(renewed.get("expirationDateTime"), expires)
            watched.renew_at = watched.expires - self._renew_before
            watched.failures = 0
        self._hooks.renewed(self.kind, watched.name)

    def _on_lifecycle(self, watched: _Watched, subscription: str, event: str) -> None:
        log.info("graph.lifecycle", mailbox=watched.name, lifecycle_event=event)
        if event == "missed":
            self._wake(watched.name)  # the notifications Graph dropped: the delta link has them
        elif event == "subscriptionRemoved":
            self._forget(watched, subscription, "removed by Graph")
        elif event == "reauthorizationRequired":
            try:
                self._request(
                    watched, "reauthorize", "POST", f"subscriptions/{subscription}/reauthorize"
                )
            except Gone:
                self._forget(watched, subscription, "gone when reauthorized")
                return
            except Exception as e:
                # Graph also accepts a renewal (PATCH) as reauthorization.
                log.info("graph.reauthorize_failed", mailbox=watched.name, error=str(e))
                self._renew(watched, subscription)
                return
            self._hooks.renewed(self.kind, watched.name)
            # Notifications held while unauthorized may be dropped: a catch-up.
            self._wake(watched.name, urgent=False)

    def _forget(self, watched: _Watched, subscription: str, why: str) -> None:
        """The subscription is gone: subscribe again now, and poll meanwhile."""
        with self._lock:
            if watched.subscription != subscription:
                return  # an old one: the current subscription stands
            self._by_subscription.pop(subscription.lower(), None)
            watched.subscription, watched.expires, watched.renew_at = None, None, None
            watched.next_attempt = 0.0
        self._set(watched, ChannelState.DEGRADED, f"subscription {why}; subscribing again")
        self._wake(watched.name, urgent=False)  # a catch-up for while it was gone

    def _connected(self, watched: _Watched, subscription: str, expires: datetime) -> bool:
        """Record the subscription; False (and deleted again) if the watch was removed
        meanwhile."""
        with self._lock:
            removed = watched.removed
            if not removed:
                watched.subscription, watched.expires = subscription, expires
        if removed:
            with contextlib.suppress(Exception):
                self._request(
                    watched, "deleteSubscription", "DELETE", f"subscriptions/{subscription}"
                )
            return False
        with self._lock:
            watched.renew_at = expires - self._renew_before
            watched.failures = 0
            self._by_subscription[subscription.lower()] = watched.name
            again, watched.ever_connected = watched.ever_connected, True
        if again:
            self._hooks.reconnected(self.kind, watched.name)
        self._set(watched, ChannelState.CONNECTED, "")
        return True

    def _failed(self, watched: _Watched, reason: str) -> None:
        with self._lock:
            watched.failures += 1
            delay = min(self._retry * 2 ** (watched.failures - 1), self._retry_max)
            watched.next_attempt = time.monotonic() + delay
        self._set(watched, ChannelState.DEGRADED, f"{reason} (retrying in {delay:.0f} s)")

    def _set(self, watched: _Watched, state: ChannelState, reason: str) -> None:
        """Record the state; the hooks hear of a change only (one log line per change, not one
        per retry)."""
        with self._lock:
            if watched.removed and state != ChannelState.OFF:
                return  # a late report of a watch removed meanwhile
            changed = watched.state != state
            watched.state, watched.reason = state, reason
            status = ChannelStatus(state=state, reason=reason, last_event=watched.last_event)
        if changed:
            self._hooks.state_changed(self.kind, watched.name, status)

    def _adopt(self, fresh: Sequence[_Watched]) -> None:
        """Take over the subscriptions a previous owner of these (just added) watches left for
        the same folders and URL, and delete any duplicates or old-style ones (``public_url``
        without ``?mailbox=``), instead of adding one more per restart or takeover."""
        seen: set[int] = set()
        wanted: dict[str, _Watched] = {}
        for watched in fresh:
            try:
                wanted[self._resource(watched).lower()] = watched
            except Exception as e:
                log.info("graph.adopt_skipped", mailbox=watched.name, error=str(e))
        for watched in list(wanted.values()):
            client = watched.client
            if id(client) in seen:
                continue
            seen.add(id(client))
            for page in client.pages(watched.address, "listSubscriptions", "subscriptions"):
                for found in page.get("value", []):
                    mine = wanted.get(str(found.get("resource", "")).lower())
                    if mine is None or mine.removed or found.get("id") == mine.subscription:
                        continue
                    url = str(found.get("notificationUrl"))
                    if url not in (self._url, self.url_for(mine.name)):
                        continue
                    if mine.subscription is None and url != self._url:
                        expires = _parse(found.get("expirationDateTime"), datetime.now(UTC))
                        if self._connected(mine, str(found["id"]), expires):
                            self._wake(mine.name, urgent=False)  # a catch-up, as after creating
                    else:
                        self._request(
                            mine, "deleteSubscription", "DELETE", f"subscriptions/{found['id']}"
                        )
