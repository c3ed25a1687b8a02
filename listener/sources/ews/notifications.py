"""EWS streaming notifications that wake the poll (issue 15).

A streaming subscription per watched folder, grouped into as few ``GetStreamingEvents``
connections as Exchange allows; every event only *wakes* the mailbox (``wake(name)``): the sync
state stays the truth, so a lost or late event costs latency, never a message.

Grouping and affinity: ``_affinity`` (a group's subscriptions share one connection and reach
the Mailbox server that holds them).

Event types: ``NewMailEvent``, ``CreatedEvent`` and ``MovedEvent``, what makes ``SyncFolderItems``
report a new item in the folder: delivery (NewMail), an item created there by a transport rule,
an import or an append (Created), a message moved in by a person or an inbox rule (Moved with the
watched folder as its new parent). Not ``ModifiedEvent``: our own ``mark_read`` after each
hand-over would wake the next poll, a poll per poll for nothing. A ``MovedEvent`` whose new parent
is another folder (mail moved *out*, e.g. by our own ``move`` action) wakes nothing.

Connections and limits: each group runs on its own thread, one ``GetStreamingEvents`` at a time
with ``ConnectionTimeout = connection_minutes`` (Exchange's cap is 30); at ``Closed`` a new
``GetStreamingEvents`` on the same subscriptions follows at once (the subscription keeps what
happened in between). The streams use their own ``Configuration`` per (credential, endpoint),
sized to its number of groups, so a stream that holds a session for 30 minutes never takes one
from the polls' pool (exchangelib's pool waits forever when it is empty). Exchange Online's
documented budgets (EWS throttling in Exchange): ``HangingConnectionLimit`` 10 streaming
connections and ``EWSMaxSubscriptions`` 20 subscriptions per mailbox (charged to the impersonated
mailbox); Exchange 2013: 3 and 5000. We hold one connection per group, impersonating the group's
anchor (a different mailbox per group), and one subscription per watched folder, unsubscribing
the ones we replace; ``ErrorExceededConnectionCount`` / ``ErrorExceededSubscriptionCount`` /
``ErrorServerBusy`` back off (exponentially, with jitter, at least the server's back-off).

Failures: ``ErrorSubscriptionNotFound``, ``ErrorExpiredSubscription``,
``ErrorMissedNotificationEvents`` (naming the subscriptions when Exchange does) and a dropped
stream subscribe again, without a watermark (streaming subscriptions have none), and wake the
mailboxes concerned (``urgent=False``: a catch-up, which waits behind the polls events ask for):
the poll catches up on whatever the lost events were about. A mailbox is
``degraded`` from the failure until its subscription is back; its poll then runs at the
configured interval. ``add(watch)`` / ``remove(name)`` change the watched set while running (with
several replicas, as leases come and go): an added folder joins a group of its (credential,
endpoint) with room, or opens a group of its own; the group's stream is ended on purpose and
started again on the new set of subscriptions (not a failure: nobody else is resubscribed); a
removed folder is unsubscribed and reported ``off``, and a group left empty ends. ``stop()`` shuts
the streaming sockets (a ``close()`` from another thread does not wake a blocked read), joins the
threads and unsubscribes.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import requests
import urllib3
from exchangelib import IMPERSONATION, OAUTH2, Account, Configuration
from exchangelib import errors as ews_errors
from exchangelib.properties import CopiedEvent, MovedEvent
from exchangelib.services import GetStreamingEvents

from listener.notify import (
    REMOVE_WAIT,
    ChannelState,
    ChannelStatus,
    NotifyHooks,
    Wake,
    Watch,
    bounded,
)
from listener.sources.ews._affinity import (
    Affinity,
    GroupStream,
    GroupSubscribe,
    GroupUnsubscribe,
    Member,
    StreamGroup,
)
from listener.sources.ews._folders import FolderResolver

__all__ = [
    "EVENT_TYPES",
    "BackOff",
    "EwsStreamingChannel",
    "impersonating",
    "streaming_configuration",
]

log = logging.getLogger(__name__)

EVENT_TYPES = ("NewMailEvent", "CreatedEvent", "MovedEvent")

# Answers that mean "this subscription is gone or lost events": subscribe again and poll.
_RESUBSCRIBE = (
    ews_errors.ErrorSubscriptionNotFound,
    ews_errors.ErrorExpiredSubscription,
    ews_errors.ErrorMissedNotificationEvents,
    ews_errors.ErrorInvalidSubscription,
    ews_errors.ErrorProxiedSubscriptionCallFailure,  # affinity lost: the back end moved
)
# Budgets of the account (see the module docstring): wait, then try again.
_BUSY = (
    ews_errors.ErrorServerBusy,
    ews_errors.ErrorExceededConnectionCount,
    ews_errors.ErrorExceededSubscriptionCount,
)
# The stream broke on the way (reset, truncated chunk, read timeout, socket shut by stop()):
# what the network or a proxy did, as opposed to an answer of Exchange (ResponseMessageError).
_DROPPED = (
    requests.RequestException,
    urllib3.exceptions.HTTPError,
    OSError,
    ews_errors.TransportError,
)


def _dropped(error: BaseException) -> bool:
    return isinstance(error, _Dropped) or (
        isinstance(error, _DROPPED) and not isinstance(error, ews_errors.ResponseMessageError)
    )


# --- the channel -------------------------------------------------------------------------------


@dataclass
class _Subscribed:
    member: Member
    account: Any
    folder: Any = None  # the resolved folder (its id filters MovedEvents)
    subscription_id: str | None = None
    removed: bool = False  # no longer watched (``EwsStreamingChannel.remove``)
    status: ChannelStatus = field(
        default_factory=lambda: ChannelStatus(state=ChannelState.DEGRADED, reason="subscribing")
    )


@dataclass(frozen=True)
class BackOff:
    """Exponential back-off with jitter: ``base * 2**n`` capped at ``cap``, times 0.5-1."""

    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int, server: float | None = None) -> float:
        raw = min(self.cap, self.base * 2 ** max(failures - 1, 0))
        wait = raw * random.uniform(0.5, 1.0)
        return float(max(wait, server or 0.0))


class _GroupRunner:
    """One group's subscriptions and its one streaming connection at a time, on a thread."""

    def __init__(
        self,
        group: StreamGroup,
        account: Callable[[str], Any],
        channel: EwsStreamingChannel,
    ) -> None:
        self.group = group
        self.affinity = Affinity(anchor=group.anchor)
        self._channel = channel
        self._account = account
        self.members = [_Subscribed(m, None) for m in group.members]
        self._stream: GroupStream | None = None
        self._lock = threading.Lock()
        self._failures = 0
        # Set by the channel's stop, or when the group's last member is removed.
        self.stopping = threading.Event()
        # The members changed: end the stream and start one on the new set (not a failure).
        self._regroup = threading.Event()
        self.thread = threading.Thread(
            target=self.run, name=f"ews-stream-{group.anchor}", daemon=True
        )

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        stop = self.stopping
        while not stop.is_set():
            try:
                # Cleared before the round, not when listening: a member added while the others
                # subscribe sets it again, and the stream then starts over with it subscribed
                # (it waited for the next rollover, up to 30 minutes, when this came later).
                self._regroup.clear()
                self._subscribe_missing()
                self._listen()
                self._failures = 0
            except Exception as error:  # handled and retried: the thread never dies of one
                if stop.is_set():
                    break
                if self._regroup.is_set():
                    continue  # the stream was ended on purpose: listen on the new members
                self._failed(error)

    # --- membership (from other threads) --------------------------------------------------------

    def add_member(self, member: Member) -> None:
        with self._lock:
            self.members = [*self.members, _Subscribed(member, None)]
            self._regroup.set()
        self.shut()

    def remove_member(self, name: str) -> list[_Subscribed]:
        """Take ``name``'s folders out of the group (the stream restarts without them); the
        group retires when nothing is left. Returns what was removed (still subscribed)."""
        with self._lock:
            gone = [s for s in self.members if s.member.name == name]
            if not gone:
                return []
            self.members = [s for s in self.members if s.member.name != name]
            for subscribed in gone:
                subscribed.removed = True
            self._regroup.set()
            if not self.members:
                self.stopping.set()
        self.shut()
        return gone

    def drop(self, subscribed: _Subscribed) -> None:
        """Unsubscribe one removed member (best effort) and report it off."""
        old, subscribed.subscription_id = subscribed.subscription_id, None
        if old is not None and subscribed.account is not None:
            with contextlib.suppress(Exception):
                list(
                    GroupUnsubscribe(account=subscribed.account, affinity=self.affinity).call(
                        subscription_id=old
                    )
                )
        status = ChannelStatus(
            state=ChannelState.OFF,
            reason="not watched by this replica",
            last_event=subscribed.status.last_event,
        )
        before, subscribed.status = subscribed.status, status
        if before.state != ChannelState.OFF:
            self._channel.hooks.state_changed(self._channel.kind, subscribed.member.name, status)

    def _subscribe_missing(self) -> None:
        """Subscribe every member without a subscription. A member the server refuses (its
        mailbox or folder is gone, the app may not impersonate it) is degraded on its own and
        tried again at the next rollover, so one bad mailbox does not keep its group off the
        stream; a spent budget (``_BUSY``) stops the round for all."""
        for subscribed in self.members:
            if self.stopping.is_set():
                return
            if subscribed.subscription_id is not None:
                continue
            try:
                self._subscribe(subscribed)
            except ews_errors.ErrorExceededSubscriptionCount as error:
                self._refused(subscribed, error)  # this mailbox's EWSMaxSubscriptions only
            except (*_BUSY, ews_errors.UnauthorizedError):
                raise  # the credential's or the server's: the whole round waits
            except Exception as error:
                if self.stopping.is_set():
                    return
                self._refused(subscribed, error)

    def _subscribe(self, subscribed: _Subscribed) -> None:
        if subscribed.account is None:
            subscribed.account = self._account(subscribed.member.address)
        if subscribed.folder is None:
            subscribed.folder = FolderResolver(subscribed.account).resolve(subscribed.member.folder)
        service = GroupSubscribe(account=subscribed.account, affinity=self.affinity)
        (found,) = list(service.call(folders=[subscribed.folder], event_types=EVENT_TYPES))
        if isinstance(found, Exception):
            raise found
        reconnect = subscribed.status.reason != "subscribing"
        subscribed.subscription_id = str(found)
        if subscribed.removed:
            self.drop(subscribed)  # removed while subscribing: give it back at once
            return
        self._set(subscribed, ChannelStatus(state=ChannelState.CONNECTED))
        if reconnect:
            self._channel.hooks.reconnected(self._channel.kind, subscribed.member.name)
        # Mail that arrived between the last poll and this subscription has no event: one
        # poll closes that gap (at start, and after every loss). A catch-up, not urgent: at
        # start a thousand of these must not go ahead of the polls that events ask for.
        self._channel.wake(subscribed.member.name, urgent=False)

    def _refused(self, subscribed: _Subscribed, error: BaseException) -> None:
        code = type(error).__name__
        reason = f"{code}: subscribing failed ({error}); trying again at the next rollover"
        self._set(
            subscribed,
            ChannelStatus(
                state=ChannelState.DEGRADED, reason=reason, last_event=subscribed.status.last_event
            ),
        )
        if subscribed.member.address == self.affinity.anchor and not any(
            s.subscription_id for s in self.members
        ):
            # Nothing is anchored yet: anchor the group on a mailbox that may work.
            others = [s.member.address for s in self.members if s is not subscribed]
            if others:
                self.affinity.anchor = others[0]

    def _listen(self) -> None:
        with self._lock:
            by_id = {s.subscription_id: s for s in self.members if s.subscription_id}
        if not by_id:
            raise _NoneSubscribed("no mailbox of this group could subscribe")
        anchor = next(iter(by_id.values())).account
        stream = GroupStream(account=anchor, affinity=self.affinity)
        stream.on_ok = functools.partial(self._up, list(by_id.values()))
        with self._lock:
            self._stream = stream
            regroup = self._regroup.is_set()
        if self.stopping.is_set() or regroup:
            with self._lock:
                self._stream = None
            return
        minutes = self._channel.config.connection_minutes
        try:
            for notification in stream.call(
                subscription_ids=list(by_id), connection_timeout=minutes
            ):
                if isinstance(notification, Exception):
                    raise notification
                subscribed = by_id.get(notification.subscription_id)
                if subscribed is not None and self._news(subscribed, notification.events):
                    self._event(subscribed)
            closed = stream.connection_status == GetStreamingEvents.CLOSED
        except ews_errors.EWSError as error:
            if stream.error_ids and isinstance(error, _RESUBSCRIBE):
                raise _Named(stream.error_ids, type(error).__name__) from None
            raise
        finally:
            with self._lock:
                self._stream = None
            with contextlib.suppress(Exception):
                stream.stop_streaming()
            if self._regroup.is_set() and not self.stopping.is_set():
                # Ended on purpose, to start over on the new members: an event the server wrote
                # to this connection after we stopped reading it is lost with it. One poll of
                # each member it carried closes that gap, as after a loss (a catch-up).
                for subscribed in by_id.values():
                    if not subscribed.removed:
                        self._channel.wake(subscribed.member.name, urgent=False)
        if self.stopping.is_set() or self._regroup.is_set():
            return
        if not closed:
            raise _Dropped("the stream ended without ConnectionStatus Closed")
        for subscribed in by_id.values():
            self._channel.hooks.renewed(self._channel.kind, subscribed.member.name)

    def _up(self, members: Sequence[_Subscribed]) -> None:
        for subscribed in members:
            if subscribed.status.state != ChannelState.CONNECTED:
                status = ChannelStatus(
                    state=ChannelState.CONNECTED, last_event=subscribed.status.last_event
                )
                self._set(subscribed, status)

    def _news(self, subscribed: _Subscribed, events: Sequence[Any] | None) -> bool:
        folder_id = getattr(subscribed.folder, "id", None)
        for event in events or ():
            if type(event).__name__ not in EVENT_TYPES and not isinstance(event, CopiedEvent):
                continue  # StatusEvent: a keep-alive of the subscription
            if isinstance(event, (MovedEvent, CopiedEvent)):
                parent = getattr(getattr(event, "parent_folder_id", None), "id", None)
                if folder_id is not None and parent is not None and parent != folder_id:
                    continue  # moved out of the watched folder: nothing new in it
            return True
        return False

    def _event(self, subscribed: _Subscribed) -> None:
        now = time.monotonic()
        self._set(subscribed, replace(subscribed.status, last_event=now))
        self._channel.hooks.event(self._channel.kind, subscribed.member.name)
        self._channel.wake(subscribed.member.name)

    # --- failures ---------------------------------------------------------------------------

    def _failed(self, error: BaseException) -> None:
        self._failures += 1
        server = getattr(error, "back_off", None)
        code = type(error).__name__
        if isinstance(error, _NoneSubscribed):
            # Each member already says why; wait before asking again.
            self.stopping.wait(self._channel.back_off.delay(self._failures))
            return
        if isinstance(error, _Named):
            lost = [s for s in self.members if s.subscription_id in error.ids] or self.members
            self._lose(lost, f"{error.code}: subscription lost; subscribing again")
            wait = 0.0 if self._failures == 1 else self._channel.back_off.delay(self._failures)
        elif isinstance(error, _RESUBSCRIBE) or _dropped(error):
            what = "subscription lost" if isinstance(error, _RESUBSCRIBE) else "stream dropped"
            self._lose(self.members, f"{code}: {what} ({error}); subscribing again")
            # The first loss is retried at once (the usual rollover or a one-off drop); a server
            # that keeps failing is not hammered.
            wait = 0.0 if self._failures == 1 else self._channel.back_off.delay(self._failures)
        elif isinstance(error, _BUSY):
            wait = self._channel.back_off.delay(self._failures, float(server) if server else None)
            self._degrade(
                f"{code}: Exchange's budget for this account is used up ({error}); "
                f"retrying in {wait:.0f} s, polling meanwhile"
            )
        elif isinstance(error, ews_errors.UnauthorizedError):
            # As the polls do (EwsMailSource._call): Exchange refused a token we believed
            # valid; fetch a new one, drop the sessions carrying the old, and retry at once.
            self._token_rejected()
            wait = 0.0 if self._failures == 1 else self._channel.back_off.delay(self._failures)
            if wait:
                self._degrade(
                    f"{code}: Exchange rejected the access token even after a fresh one "
                    f"({error}); retrying in {wait:.0f} s, polling meanwhile"
                )
        else:
            wait = self._channel.back_off.delay(self._failures)
            self._degrade(f"{code}: {error}; retrying in {wait:.0f} s, polling meanwhile")
        if wait:
            self.stopping.wait(wait)

    def _token_rejected(self) -> None:
        account = next((s.account for s in self.members if s.account is not None), None)
        if account is None:
            return
        protocol = account.protocol
        rejected = getattr(protocol.credentials, "server_rejected", None)
        with contextlib.suppress(Exception):
            if rejected is not None:
                rejected()
            protocol.close()

    def _lose(self, lost: Sequence[_Subscribed], reason: str) -> None:
        for subscribed in lost:
            old = subscribed.subscription_id
            subscribed.subscription_id = None
            if old is not None and subscribed.account is not None:
                # Best effort: an abandoned subscription counts against EWSMaxSubscriptions.
                with contextlib.suppress(Exception):
                    list(
                        GroupUnsubscribe(account=subscribed.account, affinity=self.affinity).call(
                            subscription_id=old
                        )
                    )
            self._set(
                subscribed,
                ChannelStatus(
                    state=ChannelState.DEGRADED,
                    reason=reason,
                    last_event=subscribed.status.last_event,
                ),
            )
            # The events the loss swallowed: the poll finds what they were about (a catch-up:
            # a group's 200 of them wait behind the events of the other groups).
            self._channel.wake(subscribed.member.name, urgent=False)

    def _degrade(self, reason: str) -> None:
        for subscribed in self.members:
            self._set(
                subscribed,
                ChannelStatus(
                    state=ChannelState.DEGRADED,
                    reason=reason,
                    last_event=subscribed.status.last_event,
                ),
            )

    def _set(self, subscribed: _Subscribed, status: ChannelStatus) -> None:
        if subscribed.removed:
            return  # a late report of a member removed meanwhile (``drop`` reported it off)
        before = subscribed.status
        subscribed.status = status
        if before.state != status.state:
            self._channel.hooks.state_changed(self._channel.kind, subscribed.member.name, status)
            if status.state == ChannelState.DEGRADED:
                log.warning(
                    "EWS streaming of %s is degraded, polling at its interval: %s",
                    subscribed.member.name,
                    status.reason,
                )
            else:
                log.info("EWS streaming of %s is connected", subscribed.member.name)

    # --- stop -------------------------------------------------------------------------------

    def shut(self) -> None:
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.shut()

    def unsubscribe(self) -> None:
        for subscribed in self.members:
            old, subscribed.subscription_id = subscribed.subscription_id, None
            if old is None or subscribed.account is None:
                continue
            with contextlib.suppress(Exception):
                list(
                    GroupUnsubscribe(account=subscribed.account, affinity=self.affinity).call(
                        subscription_id=old
                    )
                )


class _NoneSubscribed(Exception):
    """Every member of the group was refused (each is degraded with its own reason)."""


class _Dropped(Exception):
    """The stream ended before ``ConnectionStatus`` ``Closed``."""


class _Named(Exception):
    """An error answer that named the subscriptions it is about."""

    def __init__(self, ids: Sequence[str], code: str) -> None:
        super().__init__(f"{code} for subscriptions {list(ids)}")
        self.ids = frozenset(ids)
        self.code = code


class EwsStreamingChannel:
    """The EWS ``NotificationChannel``: streaming subscriptions of many mailboxes, few streams."""

    kind = "ews_streaming"

    def __init__(
        self,
        groups: Sequence[StreamGroup],
        *,
        account: Callable[[StreamGroup, str], Any],
        wake: Wake,
        hooks: NotifyHooks,
        config: Any,  # EwsStreamingConfig
        back_off: BackOff | None = None,
        on_close: Callable[[], None] | None = None,
        resolve: Callable[[Watch], tuple[Member, str, str]] | None = None,
    ) -> None:
        self.config = config
        self.wake = wake
        self.hooks = hooks
        self.back_off = back_off or BackOff()
        self.stopping = threading.Event()
        self._on_close = on_close
        self._account = account
        self._resolve = resolve  # a watch → (member, credential, endpoint), for ``add``
        self._lock = threading.Lock()  # membership changes
        # Replaced, never changed in place (``status`` and ``stop`` read a snapshot).
        self.runners = [
            _GroupRunner(group, functools.partial(account, group), self) for group in groups
        ]
        self._started = False

    def start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
            for runner in self.runners:
                runner.thread.start()

    def lifecycle(self, name: str, subscription: str, event: str) -> None:
        """EWS streaming has no lifecycle notifications: nothing to do."""

    def add(self, watch: Watch) -> None:
        """Subscribe one more folder: into a group of its (credential, endpoint) with room (its
        stream restarts with the new subscription), or a new group on a thread of its own."""
        if self._resolve is None:
            raise TypeError("this channel was built without a resolver: it cannot add watches")
        with self._lock:
            if self.stopping.is_set() or any(
                s.member.name == watch.name for r in self.runners for s in r.members
            ):
                return
            member, credential, endpoint = self._resolve(watch)
            key = (credential, endpoint.rstrip("/").lower())
            per = self.config.subscriptions_per_connection
            for runner in self.runners:
                group = runner.group
                if (
                    (group.credential, group.endpoint.rstrip("/").lower()) == key
                    and not runner.stopping.is_set()
                    and len(runner.members) < per
                ):
                    runner.add_member(member)
                    return
            group = StreamGroup(credential, endpoint, (member,))
            runner = _GroupRunner(group, functools.partial(self._account, group), self)
            self.runners = [*self.runners, runner]
            if self._started:
                runner.thread.start()

    def remove(self, name: str, *, unsubscribe: bool = True) -> None:
        """Unsubscribe ``name``'s folders (always: a streaming subscription belongs to the
        connection that made it, no other process can take it over) and report them off; a group
        left empty ends its stream."""
        with self._lock:
            gone = [(r, r.remove_member(name)) for r in self.runners]
            self.runners = [r for r in self.runners if r.members]
        if not any(members for _, members in gone):
            return

        def drop() -> None:
            for runner, members in gone:
                for subscribed in members:
                    runner.drop(subscribed)

        if not bounded(drop, REMOVE_WAIT, "ews-unsubscribe"):
            log.warning("EWS Unsubscribe of %s is slow; finishing in the background", name)

    def stop(self, timeout: float = 10.0) -> None:
        if self.stopping.is_set():
            return
        with self._lock:
            self.stopping.set()
        for runner in self.runners:
            runner.stopping.set()
            runner.shut()
        deadline = time.monotonic() + timeout
        for runner in self.runners:
            if runner.thread.is_alive():
                runner.thread.join(max(deadline - time.monotonic(), 0.1))
        for runner in self.runners:
            runner.unsubscribe()
        if self._on_close is not None:
            self._on_close()

    def status(self) -> Mapping[str, ChannelStatus]:
        found: dict[str, ChannelStatus] = {}
        for runner in self.runners:
            for subscribed in runner.members:
                name = subscribed.member.name
                # Two folders of one configured name: the worse one speaks.
                if name not in found or subscribed.status.state != ChannelState.CONNECTED:
                    found[name] = subscribed.status
        return found


# --- building it from the factory's configurations ---------------------------------------------


def streaming_configuration(config: Configuration, bridge: Any, groups: int) -> Configuration:
    """A configuration for the streams of one (credential, endpoint): the same endpoint, version
    and retry policy, a credentials object of its own (exchangelib caches one ``Protocol`` per
    (endpoint, credentials), so this gives the streams their own session pool), sized for one
    session per group plus one for subscribing."""
    return Configuration(
        service_endpoint=config.service_endpoint,
        credentials=bridge,
        auth_type=OAUTH2,
        version=config.version,
        retry_policy=config.retry_policy,
        max_connections=groups + 1,
    )


def impersonating(config: Configuration) -> Callable[[str], Account]:
    def account(address: str) -> Account:
        return Account(
            primary_smtp_address=address,
            config=config,
            autodiscover=False,
            access_type=IMPERSONATION,
        )

    return account
