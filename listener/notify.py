"""Push notifications as hints: what a notification channel is, and what it reports (issue 15).

A notification never decides what is new: the persisted cursor (EWS sync state, Graph delta link)
does. A channel only *wakes* a mailbox (``wake(name)``, which the service turns into a coalesced,
debounced ``request_poll``), so a lost, late, duplicated or forged notification can cost latency
or one extra poll, never a message. ``wake(name, urgent=False)`` is a *catch-up*: no event said
mail is there, but some may have come while nothing listened (before a subscription began, or
while a stream was broken); its poll waits its turn behind the notifications' polls instead of
going ahead of them (``listener.scheduler``, "Urgent first").

The pieces:

- ``Watch``: one watched folder a channel subscribes to.
- ``NotificationChannel``: built by a ``SourceFactory`` (``notifications(...)``) for the watches of
  its protocol: EWS streaming subscriptions (``listener.sources.ews``) or Graph change
  notifications (``listener.sources.graph``). Started after the scheduler, stopped before it.
- ``ChannelState``: per mailbox, ``connected``, ``degraded`` (broken; polling at the configured
  interval until it recovers) or ``off`` (not configured).
- ``NotifyHooks``: no-op hooks (the ``PollHooks`` habit) that ``Metrics`` implements.
- ``HttpRequest`` / ``HttpAnswer`` / ``Receiver``: a channel that is *pushed to* (Graph's webhook)
  lists its ``routes`` (path → receiver); the daemon mounts them on the service's HTTP server, so
  a channel never opens a port of its own and the server never imports a protocol.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

__all__ = [
    "REMOVE_WAIT",
    "ChannelState",
    "ChannelStatus",
    "HttpAnswer",
    "HttpRequest",
    "NotificationChannel",
    "NotifyHooks",
    "Receiver",
    "Relay",
    "Wake",
    "Watch",
    "bounded",
    "routes_of",
]


class Wake(Protocol):
    """Ask for a poll of the configured mailbox ``name`` whose folder changed (``urgent``) or
    may have changed unseen (``urgent=False``: a catch-up, see the module docstring)."""

    def __call__(self, name: str, /, *, urgent: bool = True) -> None: ...


# A lifecycle notification (Graph's ``subscriptionRemoved``, ...) for (mailbox, subscription id,
# event) that this replica received for a subscription another replica holds: passed to it.
Relay = Callable[[str, str, str], None]


class ChannelState(StrEnum):
    CONNECTED = "connected"
    DEGRADED = "degraded"
    OFF = "off"


@dataclass(frozen=True, kw_only=True)
class ChannelStatus:
    """How one mailbox's channel is doing, for ``/readyz`` and metrics."""

    state: ChannelState
    reason: str = ""  # why it is degraded, in words a reader can act on; "" when connected
    last_event: float | None = None  # time.monotonic() of the last event received, if any


@dataclass(frozen=True, kw_only=True)
class Watch:
    """One watched folder of one mailbox that a channel subscribes to."""

    name: str  # the configured mailbox name: what ``wake`` is called with
    mailbox: Any  # its ``MailboxConfig`` (address, credential, endpoint, folder, ...)


class NotificationChannel(Protocol):
    """The push side of one protocol for a set of watches."""

    kind: str  # "ews_streaming" or "graph_webhook": the ``channel`` label of its metrics

    def start(self) -> None:
        """Subscribe and begin listening in the background; never raises for a broken server
        (a watch that cannot subscribe is ``degraded`` and polling covers it)."""
        ...

    def stop(self) -> None:
        """Stop listening and unsubscribe where the protocol allows; idempotent."""
        ...

    def status(self) -> Mapping[str, ChannelStatus]:
        """Per configured mailbox name, how its channel is doing."""
        ...

    def add(self, watch: Watch) -> None:
        """Watch one more folder (subscribe in the background; a poll follows the subscription).
        Idempotent; safe from any thread while running (the lease manager's, with replicas)."""
        ...

    def remove(self, name: str, *, unsubscribe: bool = True) -> None:
        """Stop watching ``name``'s folder and report it ``off``. ``unsubscribe=False`` only
        forgets a subscription another process may now hold (a lost lease). Idempotent."""
        ...

    def lifecycle(self, name: str, subscription: str, event: str) -> None:
        """A lifecycle notification another replica received for ``name``'s subscription: act
        on it as if it had arrived here (a subscription not held here: a poll). Channels whose
        protocol has none ignore it."""
        ...


class NotifyHooks:
    """No-op hooks of the notification channels; ``channel`` is a ``NotificationChannel.kind``."""

    def event(self, channel: str, mailbox: str) -> None:
        """A notification for ``mailbox`` arrived (and was turned into a poll request)."""

    def reconnected(self, channel: str, mailbox: str) -> None:
        """A stream or subscription of ``mailbox`` was set up again after a failure."""

    def renewed(self, channel: str, mailbox: str) -> None:
        """A subscription (or streaming connection) of ``mailbox`` was renewed before expiry."""

    def state_changed(self, channel: str, mailbox: str, status: ChannelStatus) -> None:
        """``mailbox``'s channel changed state (logged once per change, not once per second)."""

    def rejected(self, channel: str, reason: str) -> None:
        """A notification was refused (wrong ``clientState``, unknown subscription, bad body)."""


@dataclass(frozen=True, kw_only=True)
class HttpRequest:
    """One POST the service's HTTP server received on a channel's route."""

    path: str
    query: Mapping[str, str]  # URL-decoded; the first value of each name
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, kw_only=True)
class HttpAnswer:
    """The answer to an ``HttpRequest``; ``after`` runs once the answer is sent (Graph wants its
    2xx within 3 s, so the work a notification starts waits until then)."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    after: Callable[[], None] | None = None


Receiver = Callable[[HttpRequest], HttpAnswer]


def routes_of(channel: object) -> Mapping[str, Receiver]:
    """The HTTP routes a channel wants mounted (``channel.routes()``), or none."""
    routes = getattr(channel, "routes", None)
    if routes is None:
        return {}
    found: Mapping[str, Receiver] = routes()
    return found


#: How long ``remove`` waits for an unsubscribe in the caller's thread (the lease manager's,
#: which must keep renewing); a slower one finishes in the background.
REMOVE_WAIT = 5.0


def bounded(work: Callable[[], None], seconds: float, name: str) -> bool:
    """Run ``work`` on a thread of its own and wait at most ``seconds``; True if it finished."""
    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join(seconds)
    return not worker.is_alive()
