"""A group of EWS streaming subscriptions that share one connection, and the affinity that keeps
its requests on the Mailbox server holding the subscriptions.

Grouping and affinity (Microsoft, "Maintain affinity between a group of subscriptions and the
Mailbox server"): the subscriptions of one (credential, endpoint) share a connection, at most
``subscriptions_per_connection`` (Exchange: 200) per ``GetStreamingEvents``. Every request of a
group carries ``X-AnchorMailbox`` = the group's first mailbox and, on ``Subscribe``,
``X-PreferServerAffinity: true``; the ``X-BackEndOverrideCookie`` the server sets is replayed on
every later request of the group, so the load balancer routes ``GetStreamingEvents`` to the
Mailbox server that holds the subscriptions (without it: ``ErrorSubscriptionNotFound``).
exchangelib 5.6.0 does half of this per *account* (``prefer_affinity``: its own address as the
anchor, the cookie kept on the ``Account``), which breaks a group of several mailboxes; the two
service subclasses here put the group's anchor and cookie in instead. The cookie is also taken out
of the pooled session's cookie jar, where ``requests`` would otherwise replay it on unrelated
requests of other groups.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any

from exchangelib.services import GetStreamingEvents, SubscribeToStreaming, Unsubscribe
from exchangelib.util import MNS, TNS, get_xml_attrs

__all__ = [
    "COOKIE",
    "Affinity",
    "GroupStream",
    "GroupSubscribe",
    "GroupUnsubscribe",
    "Member",
    "StreamGroup",
    "plan_groups",
]

COOKIE = "X-BackEndOverrideCookie"


@dataclass
class Affinity:
    """What a group's requests carry so they reach the Mailbox server of its subscriptions."""

    anchor: str  # X-AnchorMailbox: the group's first mailbox
    cookie: str | None = None  # X-BackEndOverrideCookie as the server last set it


@dataclass(frozen=True)
class Member:
    """One watched folder of a group: the configured mailbox name and where it lives."""

    name: str
    address: str
    folder: str


@dataclass(frozen=True)
class StreamGroup:
    """Subscriptions that share one ``GetStreamingEvents`` connection."""

    credential: str
    endpoint: str
    members: tuple[Member, ...]

    @property
    def anchor(self) -> str:
        return self.members[0].address


def plan_groups(
    targets: Iterable[tuple[Member, str, str]], per_connection: int
) -> list[StreamGroup]:
    """Group ``(member, credential, endpoint)`` by credential and endpoint (case-insensitive),
    in the given order, at most ``per_connection`` members a group."""
    if per_connection < 1:
        raise ValueError(f"per_connection must be at least 1, got {per_connection}")
    by_key: dict[tuple[str, str], tuple[str, list[Member]]] = {}
    for member, credential, endpoint in targets:
        key = (credential, endpoint.rstrip("/").lower())
        by_key.setdefault(key, (endpoint, []))[1].append(member)
    groups: list[StreamGroup] = []
    for (credential, _), (endpoint, members) in by_key.items():
        for start in range(0, len(members), per_connection):
            chunk = tuple(members[start : start + per_connection])
            groups.append(StreamGroup(credential, endpoint, chunk))
    return groups


# --- exchangelib services with a group's affinity ----------------------------------------------


def _take_cookie(affinity: Affinity, response: Any, session: Any) -> None:
    """Keep the back-end cookie the server set, and drop it from the pooled session's jar."""
    header = getattr(response, "headers", {}).get("Set-Cookie")
    if header:
        parsed: SimpleCookie = SimpleCookie()
        with contextlib.suppress(CookieError):
            parsed.load(header)
        if COOKIE in parsed:
            affinity.cookie = parsed[COOKIE].value
    jar = getattr(session, "cookies", None)
    if jar is not None:
        for cookie in [c for c in jar if c.name == COOKIE]:
            with contextlib.suppress(KeyError):
                jar.clear(cookie.domain, cookie.path, cookie.name)


class _Affine:
    """Mixin: the group's anchor, ``X-PreferServerAffinity`` and its cookie on every request."""

    affinity: Affinity

    def _extra_headers(self) -> dict[str, str]:
        headers: dict[str, str] = super()._extra_headers()  # type: ignore[misc]
        headers["X-AnchorMailbox"] = self.affinity.anchor
        headers["X-PreferServerAffinity"] = "true"
        if self.affinity.cookie:
            # As a cookie (what the load balancer reads) and as exchangelib's header form.
            headers["Cookie"] = f"{COOKIE}={self.affinity.cookie}"
            headers[COOKIE] = self.affinity.cookie
        return headers

    def _handle_response_cookies(self, session: Any) -> None:
        # Called before the session goes back to the pool: take the cookie out of its jar (the
        # group keeps it, see _get_response), instead of exchangelib storing it on the Account.
        _take_cookie(self.affinity, None, session)

    def _get_response(self, payload: Any, api_version: Any) -> Any:
        response = super()._get_response(payload, api_version)  # type: ignore[misc]
        _take_cookie(self.affinity, response, None)
        return response


class GroupSubscribe(_Affine, SubscribeToStreaming):  # type: ignore[misc]
    def __init__(self, *, account: Any, affinity: Affinity) -> None:
        super().__init__(account=account)
        self.affinity = affinity


class GroupUnsubscribe(_Affine, Unsubscribe):  # type: ignore[misc]
    def __init__(self, *, account: Any, affinity: Affinity) -> None:
        super().__init__(account=account)
        self.affinity = affinity


class GroupStream(_Affine, GetStreamingEvents):  # type: ignore[misc]
    """``GetStreamingEvents`` that also remembers which subscriptions an error named."""

    def __init__(self, *, account: Any, affinity: Affinity) -> None:
        super().__init__(account=account)
        self.affinity = affinity
        self.error_ids: list[str] = []
        self.on_ok: Callable[[], None] | None = None  # each envelope that is not an error
        self._shut = False  # set by shut(), from the thread that stops the channel

    def _get_element_container(self, message: Any, name: Any = None) -> Any:
        found = message.find(f"{{{MNS}}}ErrorSubscriptionIds")
        if found is not None:
            # types.xsd puts SubscriptionId in the types namespace; exchangelib 5.6.0 looks for it
            # in the messages one (and so never names the failing subscriptions). Read both.
            self.error_ids = [
                *get_xml_attrs(found, f"{{{TNS}}}SubscriptionId"),
                *get_xml_attrs(found, f"{{{MNS}}}SubscriptionId"),
            ]
        container = super()._get_element_container(message, name)
        if self.on_ok is not None:
            self.on_ok()  # the stream is up (keep-alives included)
        return container

    def _get_response(self, payload: Any, api_version: Any) -> Any:
        response = super()._get_response(payload, api_version)
        if self._shut:
            # shut() came while the request waited for the answer's headers, before there was a
            # response to end: end it now, or the thread would read on until the next keep-alive.
            self._end(response)
        return response

    def shut(self) -> None:
        """From another thread: end the read the streaming thread is blocked in (or, when the
        answer has not begun yet, the read it is about to start: see ``_get_response``)."""
        self._shut = True
        response = getattr(self, "_streaming_response", None)
        if response is None:
            return
        self._end(response)

    @staticmethod
    def _end(response: Any) -> None:
        connection = getattr(getattr(response, "raw", None), "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            response.close()
