"""EWS streaming notifications (issue 15): grouping, affinity, renewal and recovery, against the
EWS emulator through the real exchangelib; ``wake`` records what it was asked (the service turns it
into a poll request)."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from types import SimpleNamespace
from typing import Any

import pytest
from exchangelib import IMPERSONATION, OAUTH2, Account, Configuration, Version
from exchangelib.errors import ErrorSubscriptionNotFound
from exchangelib.version import EXCHANGE_2016

from ews_listener_emulators.ops import notifications as emulated
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer
from listener.abc import AccessToken
from listener.config.models import EwsStreamingConfig
from listener.notify import ChannelState, ChannelStatus, NotifyHooks, Watch
from listener.sources.ews._affinity import (
    COOKIE,
    Affinity,
    GroupStream,
    GroupSubscribe,
    Member,
    plan_groups,
)
from listener.sources.ews._transport import register_ca_bundle
from listener.sources.ews.connections import EwsSources
from listener.sources.ews.notifications import BackOff, EwsStreamingChannel
from tests.emulator.conftest import ALICE, BOB, CLIENT_ID, TENANT, TokenCredentials

FAST = BackOff(base=0.01, cap=0.05)


# --- grouping (no server) ----------------------------------------------------------------------


def _member(i: int) -> Member:
    return Member(f"mb{i}", f"user{i}@contoso.com", "inbox")


def test_groups_hold_at_most_the_per_connection_limit() -> None:
    """450 watches of one credential and endpoint: 200, 200 and 50 per connection, in order."""
    targets = [(_member(i), "sales", "https://ex/EWS/Exchange.asmx") for i in range(450)]
    groups = plan_groups(targets, 200)
    assert [len(g.members) for g in groups] == [200, 200, 50]
    assert [m.name for g in groups for m in g.members] == [f"mb{i}" for i in range(450)]
    assert [g.anchor for g in groups] == [
        "user0@contoso.com",
        "user200@contoso.com",
        "user400@contoso.com",
    ]


def test_groups_split_by_credential_and_endpoint() -> None:
    """Subscriptions share a connection only with the same credential and endpoint (any case)."""
    a, b, c, d = (_member(i) for i in range(4))
    groups = plan_groups(
        [
            (a, "sales", "https://EX.example/EWS/Exchange.asmx"),
            (b, "support", "https://ex.example/EWS/Exchange.asmx"),
            (c, "sales", "https://ex.example/EWS/Exchange.asmx/"),
            (d, "sales", "https://other.example/EWS/Exchange.asmx"),
        ],
        200,
    )
    assert [[m.name for m in g.members] for g in groups] == [["mb0", "mb2"], ["mb1"], ["mb3"]]
    assert [g.credential for g in groups] == ["sales", "support", "sales"]


@pytest.mark.parametrize("limit", [0, -1])
def test_a_per_connection_limit_below_one_is_refused(limit: int) -> None:
    """A group must hold at least one subscription."""
    with pytest.raises(ValueError, match="at least 1"):
        plan_groups([], limit)


def test_back_off_grows_with_jitter_and_honours_the_server() -> None:
    """Exponential, capped, jittered between half and all of it; never under the server's."""
    back_off = BackOff(base=1, cap=8)
    for failures, top in ((1, 1), (2, 2), (3, 4), (4, 8), (9, 8)):
        waits = {back_off.delay(failures) for _ in range(50)}
        assert all(top / 2 <= w <= top for w in waits)
        assert len(waits) > 1
    assert back_off.delay(1, server=30) == 30


def test_affinity_headers_of_subscribe_and_stream(
    emu: EwsEmulator, token_server: TokenServer
) -> None:
    """Both services carry the group's anchor (not their own mailbox), PreferServerAffinity and,
    once the server set it, the back-end cookie as a cookie and as exchangelib's header."""
    credentials = TokenCredentials(lambda: "unused", None)
    config = Configuration(
        service_endpoint=emu.url,
        credentials=credentials,
        auth_type=OAUTH2,
        version=Version(build=EXCHANGE_2016),
    )
    bob = Account(BOB, access_type=IMPERSONATION, config=config, autodiscover=False)
    affinity = Affinity(anchor=ALICE)
    for service in (
        GroupSubscribe(account=bob, affinity=affinity),
        GroupStream(account=bob, affinity=affinity),
    ):
        headers = service._extra_headers()
        assert headers["X-AnchorMailbox"] == ALICE
        assert headers["X-PreferServerAffinity"] == "true"
        assert COOKIE not in headers
        assert "Cookie" not in headers
    affinity.cookie = "emu-backend-3"
    headers = GroupStream(account=bob, affinity=affinity)._extra_headers()
    assert headers["Cookie"] == f"{COOKIE}=emu-backend-3"
    assert headers[COOKIE] == "emu-backend-3"


# --- the channel against the emulator ----------------------------------------------------------


class Recorder(NotifyHooks):
    """``wake`` and the hooks, recorded; ``wait`` blocks until a condition holds (no sleeps)."""

    def __init__(self) -> None:
        self.wakes: Counter[str] = Counter()
        self.urgent: Counter[str] = Counter()  # the wakes of events (not catch-ups)
        self.calls: list[tuple[str, str]] = []
        self.states: list[tuple[str, ChannelStatus]] = []
        self._cond = threading.Condition()

    def wake(self, name: str, /, *, urgent: bool = True) -> None:
        with self._cond:
            self.wakes[name] += 1
            if urgent:
                self.urgent[name] += 1
            self._cond.notify_all()

    def _note(self, hook: str, mailbox: str) -> None:
        with self._cond:
            self.calls.append((hook, mailbox))
            self._cond.notify_all()

    def event(self, channel: str, mailbox: str) -> None:
        self._note("event", mailbox)

    def reconnected(self, channel: str, mailbox: str) -> None:
        self._note("reconnected", mailbox)

    def renewed(self, channel: str, mailbox: str) -> None:
        self._note("renewed", mailbox)

    def state_changed(self, channel: str, mailbox: str, status: ChannelStatus) -> None:
        with self._cond:
            self.states.append((mailbox, status))
            self._cond.notify_all()

    def count(self, hook: str, mailbox: str) -> int:
        with self._cond:
            return self.calls.count((hook, mailbox))

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
        """Re-checked at every hook call and every 50 ms (some conditions are the emulator's)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {what}: {self.calls}")
                self._cond.wait(0.05)


class _Tokens:
    name = "ews"

    def __init__(self, server: TokenServer) -> None:
        self._server = server

    def get_token(self, *, force_refresh: bool = False) -> AccessToken:
        from datetime import UTC, datetime, timedelta

        return AccessToken(
            self._server.issue_token(TENANT, CLIENT_ID), datetime.now(UTC) + timedelta(hours=1)
        )

    def invalidate(self, token: str) -> None:
        return


MAILBOXES = [f"user{i}@contoso.com" for i in range(5)]


@pytest.fixture
def registry(emu: EwsEmulator) -> Iterator[emulated.Subscriptions]:
    """The emulator's streaming registry with a shrunk minute and 8 back ends; restored after."""
    found = emulated.subscriptions(emu)
    saved = dataclasses.replace(found)
    found.clear()
    # The streams of the previous test end at the emulator's next write to their closed socket.
    deadline = time.monotonic() + 30
    while any(found.streams(a) for a in MAILBOXES) and time.monotonic() < deadline:
        time.sleep(0.05)
    emulated.configure(emu, minute=0.3, keepalive=0.1, backends=8)
    for address in MAILBOXES:
        emu.add_mailbox(address)
    yield found
    found.drop_streams()  # the server side of streams whose client has gone ends now
    found.clear()
    for name in (
        "minute",
        "keepalive",
        "backends",
        "hanging_limit",
        "subscription_limit",
        "queue_limit",
    ):
        setattr(found, name, getattr(saved, name))


Build = Callable[..., tuple[EwsStreamingChannel, Recorder]]


def _mailbox(emu: EwsEmulator, ca: Any, address: str) -> SimpleNamespace:
    """A streaming EWS mailbox's configuration on the emulator (the fields the sources read)."""
    return SimpleNamespace(
        address=address,
        credential="ews",
        endpoint=emu.url,
        folder="inbox",
        ca_bundle=ca.ca_file,
        version="Exchange2016",
        source="ews",
        notifications="streaming",
    )


@pytest.fixture
def channel(emu: EwsEmulator, token_server: TokenServer, registry: Any, ca: Any) -> Iterator[Build]:
    """Build (and afterwards stop) a channel of EwsSources over the emulator's mailboxes."""
    built: list[tuple[EwsStreamingChannel, EwsSources]] = []

    def build(
        addresses: list[str] = MAILBOXES,
        *,
        per_connection: int = 200,
        minutes: int = 1,
        configured: list[str] | None = None,
    ) -> tuple[EwsStreamingChannel, Recorder]:
        settings = SimpleNamespace(
            credentials={"ews": SimpleNamespace(client_id=CLIENT_ID, max_connections=4)},
            notifications=SimpleNamespace(
                ews=EwsStreamingConfig(
                    connection_minutes=minutes, subscriptions_per_connection=per_connection
                )
            ),
            # Every streaming mailbox of the configuration (the streams' pool is sized for all)
            mailboxes={a.partition("@")[0]: _mailbox(emu, ca, a) for a in configured or ()},
        )
        tokens = _Tokens(token_server)
        factory = EwsSources(SimpleNamespace(for_source=lambda c, e: tokens), settings)
        watches = [_watch(emu, ca, address) for address in addresses]
        recorder = Recorder()
        made = factory.notifications(watches, recorder.wake, recorder, back_off=FAST)
        assert isinstance(made, EwsStreamingChannel)
        built.append((made, factory))
        return made, recorder

    yield build
    for made, factory in built:
        made.stop()
        factory.close()


def _deliver(emu: EwsEmulator, address: str, subject: str = "hello") -> str:
    msg = EmailMessage()
    msg["From"] = "customer@example.net"
    msg["To"] = address
    msg["Subject"] = subject
    msg.set_content("body")
    return emu.deliver(address, msg.as_bytes(), folder="inbox")


def _connected(made: EwsStreamingChannel) -> bool:
    status = made.status()
    return bool(status) and all(s.state == ChannelState.CONNECTED for s in status.values())


def test_one_connection_carries_every_mailbox_and_each_event_wakes_its_own(
    channel: Build, emu: EwsEmulator, registry: emulated.Subscriptions
) -> None:
    """Five mailboxes on eight back ends, one stream: each delivery wakes its mailbox only."""
    made, seen = channel()
    made.start()
    seen.wait(lambda: _connected(made), "every mailbox connected")
    # One subscription per watch, and every stream is the anchor's (the group's first mailbox).
    assert len(registry.all()) == len(MAILBOXES)
    seen.wait(lambda: registry.streams(MAILBOXES[0]) == 1, "the anchor's stream open")
    assert [registry.streams(a) for a in MAILBOXES[1:]] == [0, 0, 0, 0]
    # Each subscription asked for its catch-up poll, none of them urgent (issue 15, 1,000
    # mailboxes: urgent ones went ahead of the events' polls); the event's wake is urgent.
    assert seen.wakes == Counter({f"user{n}": 1 for n in range(len(MAILBOXES))})
    assert seen.urgent == Counter()
    before = Counter(seen.wakes)
    _deliver(emu, MAILBOXES[3])
    seen.wait(lambda: seen.count("event", "user3") == 1, "the event of user3")
    assert seen.wakes - before == Counter({"user3": 1})
    assert seen.urgent == Counter({"user3": 1})
    assert {s.backend for s in registry.all()} == {registry.backend_of(MAILBOXES[0])}
    # The cookie the first Subscribe got back is the group's (and goes on every later request).
    assert made.runners[0].affinity.cookie == f"emu-backend-{registry.backend_of(MAILBOXES[0])}"


def test_without_the_group_affinity_the_emulator_loses_the_subscriptions(
    emu: EwsEmulator, registry: emulated.Subscriptions, token_server: TokenServer, ca: Any
) -> None:
    """The control: exchangelib's per-account affinity subscribes each mailbox on its own back end,
    and one stream of them all is ErrorSubscriptionNotFound (so the test above proves ours)."""
    # Trust the emulator's CA as the sources do (run alone, no source has done it yet).
    register_ca_bundle(emu.url, str(ca.ca_file))
    spread = [a for a in MAILBOXES if registry.backend_of(a) != registry.backend_of(MAILBOXES[0])]
    assert spread, "the test needs mailboxes on another back end"
    accounts = []
    for address in [MAILBOXES[0], spread[0]]:
        # A configuration (so a session and cookie jar) each, as one Account per mailbox has.
        config = Configuration(
            service_endpoint=emu.url,
            credentials=TokenCredentials(lambda: token_server.issue_token(TENANT, CLIENT_ID), None),
            auth_type=OAUTH2,
            version=Version(build=EXCHANGE_2016),
        )
        accounts.append(
            Account(address, access_type=IMPERSONATION, config=config, autodiscover=False)
        )
    try:
        ids = [acc.inbox.subscribe_to_streaming() for acc in accounts]
        with pytest.raises(ErrorSubscriptionNotFound):
            list(accounts[0].inbox.get_streaming_events(ids, connection_timeout=1))
    finally:
        for acc in accounts:
            acc.protocol.close()


def test_more_watches_than_a_connection_takes_use_more_connections(
    channel: Build, emu: EwsEmulator
) -> None:
    """Two subscriptions per connection: five mailboxes stream on three connections at once."""
    made, seen = channel(per_connection=2)
    made.start()
    seen.wait(lambda: _connected(made), "every mailbox connected")
    registry = emulated.subscriptions(emu)
    seen.wait(
        lambda: (
            [registry.streams(a) for a in (MAILBOXES[0], MAILBOXES[2], MAILBOXES[4])] == [1, 1, 1]
        ),
        "three streams, one per group anchor",
    )
    _deliver(emu, MAILBOXES[4])
    seen.wait(lambda: seen.count("event", "user4") == 1, "the event of user4")


def test_the_connection_is_renewed_at_its_timeout(channel: Build, emu: EwsEmulator) -> None:
    """A one-minute ConnectionTimeout (0.3 s here) ends in Closed and a new stream on the same
    subscriptions follows: no resubscription, and mail after the rollover still wakes."""
    made, seen = channel(MAILBOXES[:2])
    made.start()
    seen.wait(lambda: seen.count("renewed", "user0") >= 3, "three rollovers")
    registry = emulated.subscriptions(emu)
    assert len(registry.all()) == 2
    assert seen.count("reconnected", "user0") == 0
    subscribes = [r for r in emu.request_log if r.operation == "Subscribe"]
    assert len(subscribes) == 2
    _deliver(emu, MAILBOXES[1])
    seen.wait(lambda: seen.count("event", "user1") == 1, "the event after the rollovers")


@pytest.mark.parametrize("fault", ["drop", "remove", "miss"])
def test_a_lost_stream_or_subscription_subscribes_again_and_wakes(
    channel: Build, emu: EwsEmulator, fault: str
) -> None:
    """A stream cut mid-way, subscriptions the server forgot, or missed events: the mailboxes are
    subscribed again (no watermark: new subscription ids), woken for a catch-up poll, and later
    mail wakes them again."""
    if fault != "remove":
        # A stream that outlives the test: the fault, not a rollover, is what ends it.
        emulated.configure(emu, minute=60.0, keepalive=0.1)
    made, seen = channel(MAILBOXES[:3])
    made.start()
    seen.wait(lambda: _connected(made), "connected")
    registry = emulated.subscriptions(emu)
    seen.wait(lambda: registry.streams(MAILBOXES[0]) == 1, "the stream open")
    old_ids = {s.subscription_id for s in registry.all()}
    before = Counter(seen.wakes)
    if fault == "drop":
        assert registry.drop_streams() == 1
    elif fault == "remove":
        assert registry.remove_subscriptions(MAILBOXES[1]) == 1
        # The open stream names it (as Exchange does for a subscription lost under it).
    else:
        assert registry.miss_events(MAILBOXES[2]) == 1
    lost = {"drop": ["user0", "user1", "user2"], "remove": ["user1"], "miss": ["user2"]}[fault]
    seen.wait(
        lambda: all(seen.count("reconnected", name) == 1 for name in lost), f"{lost} reconnected"
    )
    seen.wait(lambda: _connected(made), "connected again")
    said = {
        "drop": "stream dropped",
        "remove": "ErrorSubscriptionNotFound",
        "miss": "ErrorMissedNotificationEvents",
    }[fault]
    for name in lost:
        assert seen.wakes[name] - before[name] >= 1
        assert seen.urgent[name] == 0  # catch-ups: no event said mail was there
        reasons = [s.reason for who, s in seen.states if who == name and s.reason]
        assert any(said in reason for reason in reasons), reasons
    new_ids = {s.subscription_id for s in registry.all()}
    assert len(new_ids) == 3
    assert len(new_ids - old_ids) == len(lost)
    _deliver(emu, MAILBOXES[1])
    seen.wait(lambda: seen.count("event", "user1") == 1, "an event after recovery")


def test_a_spent_connection_budget_degrades_with_a_reason_then_recovers(
    channel: Build, emu: EwsEmulator
) -> None:
    """ErrorExceededConnectionCount (HangingConnectionLimit): degraded, saying why, polling
    meanwhile; connected once the budget allows a stream again."""
    registry = emulated.configure(emu, hanging_limit=0)
    made, seen = channel(MAILBOXES[:2])
    made.start()
    seen.wait(
        lambda: any(
            s.state == ChannelState.DEGRADED and "ErrorExceededConnectionCount" in s.reason
            for _, s in seen.states
        ),
        "a degraded state naming the error",
    )
    assert "budget" in made.status()["user0"].reason
    registry.hanging_limit = 10
    seen.wait(lambda: _connected(made), "connected after the budget returned")


def test_stop_ends_the_stream_promptly_and_unsubscribes(channel: Build, emu: EwsEmulator) -> None:
    """stop() during a 30-minute stream returns with the thread ended and nothing subscribed."""
    emulated.configure(emu, minute=60.0, keepalive=30.0)
    made, seen = channel(MAILBOXES[:2], minutes=30)
    made.start()
    registry = emulated.subscriptions(emu)
    seen.wait(lambda: registry.streams(MAILBOXES[0]) == 1, "the stream open")
    made.stop()
    assert not made.runners[0].thread.is_alive()
    assert registry.all() == []


def test_a_mailbox_that_cannot_subscribe_does_not_keep_its_group_off_the_stream(
    channel: Build, emu: EwsEmulator
) -> None:
    """A watched mailbox that does not exist (and anchors the group): degraded with the server's
    reason; the others subscribe, anchored elsewhere, and their mail wakes them."""
    made, seen = channel(["nobody@contoso.com", *MAILBOXES[:2]])
    made.start()
    seen.wait(
        lambda: (
            made.status()["user1"].state == ChannelState.CONNECTED
            and made.status()["nobody"].reason != "subscribing"
        ),
        "user1 connected, nobody refused",
    )
    nobody = made.status()["nobody"]
    assert nobody.state == ChannelState.DEGRADED
    assert "ErrorNonExistentMailbox" in nobody.reason
    assert made.runners[0].affinity.anchor == MAILBOXES[0]
    _deliver(emu, MAILBOXES[1])
    seen.wait(lambda: seen.count("event", "user1") == 1, "the event of user1")


@pytest.mark.parametrize("operation", ["GetStreamingEvents", "Subscribe"])
def test_a_rejected_token_is_renewed_as_the_polls_do(
    channel: Build, emu: EwsEmulator, operation: str
) -> None:
    """A 401 on Subscribe or on the stream: a new token, the channel connects, no degraded state
    (the first rejection is retried at once)."""
    emu.faults.add("revoke_tokens", operation=operation, count=1)
    made, seen = channel(MAILBOXES[:2])
    made.start()
    seen.wait(lambda: _connected(made), "connected")
    registry = emulated.subscriptions(emu)
    seen.wait(lambda: registry.streams(MAILBOXES[0]) == 1, "the stream open")
    assert emu.faults.counters().get("revoke_tokens", 0) == 1
    assert [s.state for _, s in seen.states] == [ChannelState.CONNECTED] * 2
    _deliver(emu, MAILBOXES[0])
    seen.wait(lambda: seen.count("event", "user0") == 1, "the event of user0")


def test_the_back_end_cookie_routes_the_stream(
    channel: Build, emu: EwsEmulator, registry: emulated.Subscriptions
) -> None:
    """The cookie is replayed: with the anchor header pointing at another back end, the renewed
    streams still reach the subscriptions (routed by the cookie), nothing subscribes again;
    without the cookie they would not (the control: the cookie dropped, the stream loses them)."""
    other = next(
        a for a in MAILBOXES if registry.backend_of(a) != registry.backend_of(MAILBOXES[0])
    )
    made, seen = channel(MAILBOXES[:2])
    made.start()
    seen.wait(lambda: _connected(made), "connected")
    affinity = made.runners[0].affinity
    affinity.anchor = other
    renewed = seen.count("renewed", "user0")
    seen.wait(lambda: seen.count("renewed", "user0") >= renewed + 2, "two rollovers")
    assert seen.count("reconnected", "user0") == 0
    affinity.cookie = None
    seen.wait(lambda: seen.count("reconnected", "user0") == 1, "lost without the cookie")


def test_a_mailbox_out_of_subscriptions_is_degraded_alone(
    channel: Build, emu: EwsEmulator, registry: emulated.Subscriptions
) -> None:
    """EWSMaxSubscriptions spent on one mailbox (by another application, say): that mailbox is
    degraded naming ErrorExceededSubscriptionCount; the group streams on without it."""
    registry.subscription_limit = 1
    mailbox = emu.store.mailbox(MAILBOXES[1])
    assert mailbox is not None
    registry.add(
        emulated.Subscription(
            subscription_id="AAAAtaken",
            kind="streaming",
            mailbox=mailbox,
            folder_ids=None,
            event_types=frozenset({"NewMailEvent"}),
            position=0,
            timeout_minutes=30,
            last_seen=registry.clock(),
            connections=1,
        )
    )
    made, seen = channel(MAILBOXES[:3])
    made.start()
    seen.wait(
        lambda: (
            made.status()["user2"].state == ChannelState.CONNECTED
            and made.status()["user1"].reason != "subscribing"
        ),
        "user2 connected, user1 refused",
    )
    assert "ErrorExceededSubscriptionCount" in made.status()["user1"].reason
    assert made.status()["user0"].state == ChannelState.CONNECTED
    _deliver(emu, MAILBOXES[2])
    seen.wait(lambda: seen.count("event", "user2") == 1, "the event of user2")


def test_mail_moved_in_wakes_and_mail_moved_out_does_not(channel: Build, emu: EwsEmulator) -> None:
    """MovedEvent into the watched folder wakes the mailbox; moved out (the listener's own move
    action, say) does not: after the move out, the next event seen is the next delivery's."""
    emu.create_folder(MAILBOXES[0], "inbox/Processed")
    elsewhere = emu.deliver(MAILBOXES[0], _mime_bytes(MAILBOXES[0]), folder="inbox/Processed")
    made, seen = channel(MAILBOXES[:1])
    made.start()
    seen.wait(lambda: _connected(made), "connected")
    registry = emulated.subscriptions(emu)
    seen.wait(lambda: registry.streams(MAILBOXES[0]) == 1, "the stream open")
    emu.move_item(MAILBOXES[0], elsewhere, "inbox")
    seen.wait(lambda: seen.count("event", "user0") == 1, "the move in")
    inbox_item = next(i.item_id for i in emu.items(MAILBOXES[0], "inbox"))
    emu.move_item(MAILBOXES[0], inbox_item, "inbox/Processed")
    _deliver(emu, MAILBOXES[0], "after the move out")
    # Two rollovers later every event of both moves and the delivery has been read (a stream's
    # Closed comes after all it carried): one event for the delivery, none for the move out.
    renewed = seen.count("renewed", "user0")
    seen.wait(lambda: seen.count("renewed", "user0") >= renewed + 2, "two rollovers")
    assert seen.count("event", "user0") == 2


def _mime_bytes(address: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "customer@example.net"
    msg["To"] = address
    msg["Subject"] = "filed elsewhere"
    msg.set_content("body")
    return msg.as_bytes()


def _subscribed(registry: emulated.Subscriptions) -> dict[str, str]:
    """The emulator's streaming subscriptions: mailbox address → subscription id."""
    return {s.mailbox.address.lower(): s.subscription_id for s in registry.all()}


def _watch(emu: EwsEmulator, ca: Any, address: str) -> Watch:
    """A watch of ``address``'s inbox on the emulator, as a replica adds one."""
    return Watch(name=address.partition("@")[0], mailbox=_mailbox(emu, ca, address))


def test_watches_added_and_removed_while_streaming(
    channel: Build, emu: EwsEmulator, registry: emulated.Subscriptions, ca: Any
) -> None:
    """``add`` fills a group with room (its stream restarts on the new set, the others' stay
    subscribed and are polled once, for what the ended stream may have carried) or opens a new
    group; ``remove`` unsubscribes at once, reports the watch off, and a group left empty ends;
    both are idempotent."""

    made, seen = channel(MAILBOXES[:1], per_connection=2, configured=MAILBOXES[:3])
    made.start()
    seen.wait(lambda: _connected(made), "user0 connected")
    seen.wait(lambda: registry.streams(MAILBOXES[0]) == 1, "user0's stream open")
    first = _subscribed(registry)[MAILBOXES[0]]
    woken = seen.wakes["user0"]  # the poll after its subscription
    for address in MAILBOXES[1:3]:
        made.add(_watch(emu, ca, address))
    made.add(_watch(emu, ca, MAILBOXES[1]))
    seen.wait(lambda: len(made.status()) == 3 and _connected(made), "three connected")
    # Its stream was ended to start over with user1: what it carried then is polled for.
    seen.wait(lambda: seen.wakes["user0"] > woken, "user0 polled after the regroup")
    assert len(made.runners) == 2  # two a connection: user0 + user1, then user2 alone
    assert sorted(_subscribed(registry)) == MAILBOXES[:3]
    assert _subscribed(registry)[MAILBOXES[0]] == first  # a regroup is not a loss
    assert seen.count("reconnected", "user0") == 0
    _deliver(emu, MAILBOXES[1])
    seen.wait(lambda: seen.count("event", "user1") == 1, "the event of the added user1")
    made.remove("user0")
    made.remove("user0")
    assert sorted(_subscribed(registry)) == MAILBOXES[1:3]
    assert "user0" not in made.status()
    assert [s.state for n, s in seen.states if n == "user0"][-1] == ChannelState.OFF
    _deliver(emu, MAILBOXES[1], "again")
    seen.wait(lambda: seen.count("event", "user1") == 2, "user1 still streaming")
    made.remove("user2")
    assert len(made.runners) == 1
    assert sorted(_subscribed(registry)) == MAILBOXES[1:2]
    assert seen.count("event", "user0") == 0


def test_a_watch_added_while_its_group_subscribes_is_on_the_first_stream(
    channel: Build, emu: EwsEmulator, registry: emulated.Subscriptions, ca: Any
) -> None:
    """A replica acquiring two mailboxes at once adds the second while the first subscribes
    (its Subscribe slowed to 0.6 s): the second is subscribed before the stream starts, not left
    off it until the connection's rollover (here 9 s away): no renewal before both connect."""
    emu.faults.add("latency", operation="Subscribe", mailbox=MAILBOXES[0], delay=0.6)
    made, seen = channel([], minutes=30, configured=MAILBOXES[:2])
    made.start()
    for address in MAILBOXES[:2]:
        made.add(_watch(emu, ca, address))
        time.sleep(0.3)  # the first one's Subscribe is on its way
    seen.wait(lambda: len(made.status()) == 2 and _connected(made), "both connected")
    assert seen.count("renewed", "user0") == 0
    assert sorted(_subscribed(registry)) == MAILBOXES[:2]
    _deliver(emu, MAILBOXES[1])
    seen.wait(lambda: seen.count("event", "user1") == 1, "the event of the second")
