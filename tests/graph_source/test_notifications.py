"""``GraphWebhooks`` against the Graph emulator: renewal, 404 at renewal, reauthorization, a
receiver that cannot be validated yet, and adoption of a killed run's subscription.

The channel's receiver is mounted on the real ``HealthServer``, which the emulator validates and
notifies over HTTP; nothing is mocked. Renewal is made due a second after subscribing by asking
to renew 59 min 59 s before a 60 min lifetime (the delays are parameters, not sleeps).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from ews_listener_emulators.graph.server import GraphEmulator
from listener.notify import ChannelState, ChannelStatus, HttpRequest, NotifyHooks, Watch
from listener.observability.health import HealthServer, HealthState
from listener.secrets import InlineSecret
from listener.sources.graph.factory import GraphSources
from listener.sources.graph.notifications import PATH, GraphWebhooks
from tests.graph_emulator.conftest import World
from tests.graph_source.conftest import mailbox_config


class Hooks(NotifyHooks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.states: list[ChannelStatus] = []
        self.lock = threading.Lock()

    def event(self, channel: str, mailbox: str) -> None:
        self.record("event")

    def reconnected(self, channel: str, mailbox: str) -> None:
        self.record("reconnected")

    def renewed(self, channel: str, mailbox: str) -> None:
        self.record("renewed")

    def rejected(self, channel: str, reason: str) -> None:
        self.record(f"rejected:{reason}")

    def state_changed(self, channel: str, mailbox: str, status: ChannelStatus) -> None:
        with self.lock:
            self.states.append(status)

    def record(self, what: str) -> None:
        with self.lock:
            self.calls.append((what, ""))

    def count(self, what: str) -> int:
        with self.lock:
            return sum(1 for name, _ in self.calls if name == what)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def server() -> Iterator[HealthServer]:
    with HealthServer(HealthState(), None, "127.0.0.1", 0) as running:
        yield running


class Woken(list[str]):
    """The channel's ``wake``: the names it was called with, and apart the urgent ones."""

    def __init__(self) -> None:
        super().__init__()
        self.urgent: list[str] = []

    def __call__(self, name: str, /, *, urgent: bool = True) -> None:
        self.append(name)
        if urgent:
            self.urgent.append(name)


Make = Callable[..., tuple[GraphWebhooks, Hooks, Woken]]


@pytest.fixture
def make(
    world: World, graph: GraphEmulator, factory: GraphSources, server: HealthServer
) -> Iterator[Make]:
    made: list[GraphWebhooks] = []

    def build(
        *, mount: bool = True, renew_soon: bool = False
    ) -> tuple[GraphWebhooks, Hooks, Woken]:
        config = SimpleNamespace(
            public_url=f"http://127.0.0.1:{server.port}{PATH}",
            client_state=InlineSecret(source="inline", value="s3cret-state"),
            lifetime_minutes=60,
            renew_before_minutes=10,
        )
        hooks, woken = Hooks(), Woken()
        watch = Watch(name="alice", mailbox=mailbox_config(world, graph))
        channel = GraphWebhooks(factory, [watch], woken, hooks, config, retry=0.05)
        if renew_soon:
            channel._renew_before = timedelta(minutes=60) - timedelta(seconds=1)
        if mount:
            for path, receiver in channel.routes().items():
                server.add_route(path, receiver)
        made.append(channel)
        return channel, hooks, woken

    yield build
    for channel in made:
        channel.stop()


def connected(channel: GraphWebhooks) -> bool:
    return channel.status()["alice"].state == ChannelState.CONNECTED


def operations(graph: GraphEmulator, operation: str) -> list[int]:
    return [r.status for r in graph.request_log if r.operation and r.operation.endswith(operation)]


def test_a_subscription_is_renewed_before_it_expires(make: Make, graph: GraphEmulator) -> None:
    """Renewal (PATCH expirationDateTime) when due; the subscription id stays the same."""
    channel, hooks, woken = make(renew_soon=True)
    channel.start()
    wait_for(lambda: connected(channel), "the subscription")
    [subscription] = graph.subscriptions.ids()
    wait_for(lambda: hooks.count("renewed") >= 1, "a renewal")
    assert graph.subscriptions.ids() == [subscription]
    assert 200 in operations(graph, "UpdateSubscription")
    assert woken == ["alice"]  # one poll after subscribing, none for a renewal
    assert woken.urgent == []  # a catch-up: it waits behind the polls notifications ask for


def test_a_subscription_gone_at_renewal_is_created_again(
    make: Make, graph: GraphEmulator, call: Any
) -> None:
    """404 on the renewal PATCH: subscribe again (reconnected) and poll for the gap."""
    channel, hooks, woken = make(renew_soon=True)
    channel.start()
    wait_for(lambda: connected(channel), "the subscription")
    [old] = graph.subscriptions.ids()
    assert call("DELETE", f"subscriptions/{old}").status_code == 204  # gone without a word
    wait_for(lambda: hooks.count("reconnected") == 1, "the new subscription")
    [new] = graph.subscriptions.ids()
    assert new != old
    assert 404 in operations(graph, "UpdateSubscription")
    assert woken.count("alice") >= 3  # subscribed, gone, subscribed again


def test_reauthorization_required_is_answered(make: Make, graph: GraphEmulator) -> None:
    """``reauthorizationRequired`` → POST /subscriptions/{id}/reauthorize, counted as renewal."""
    channel, hooks, _ = make()
    channel.start()
    wait_for(lambda: connected(channel), "the subscription")
    [subscription] = graph.subscriptions.ids()
    graph.subscriptions.require_reauthorization(subscription)
    wait_for(lambda: hooks.count("renewed") == 1, "the reauthorization")
    assert operations(graph, "reauthorize") == [204]
    assert graph.subscriptions.ids() == [subscription]


def test_an_unreachable_receiver_is_degraded_then_connects_once_reachable(
    make: Make, graph: GraphEmulator, server: HealthServer
) -> None:
    """Graph's validation fails while the route is missing (400): degraded with the reason,
    retried with back-off; once mounted, connected. One state change each way, not one per try."""
    channel, hooks, _ = make(mount=False)
    channel.start()
    wait_for(lambda: operations(graph, "CreateSubscription").count(400) >= 2, "two failures")
    status = channel.status()["alice"]
    assert status.state == ChannelState.DEGRADED
    assert "cannot subscribe" in status.reason
    for path, receiver in channel.routes().items():
        server.add_route(path, receiver)
    wait_for(lambda: connected(channel), "the subscription")
    assert [s.state for s in hooks.states] == [ChannelState.DEGRADED, ChannelState.CONNECTED]


def test_a_killed_run_s_subscription_is_adopted(make: Make, graph: GraphEmulator) -> None:
    """A run that died without deleting its subscription: the next one takes it over rather
    than adding a second one that would notify twice."""
    first, _, _ = make()
    first.start()
    wait_for(lambda: connected(first), "the first subscription")
    [subscription] = graph.subscriptions.ids()
    first._stopping.set()  # as if killed: the thread ends, nothing is deleted
    with first._lock:
        first._watched["alice"].subscription = None
    second, _, woken = make()
    second.start()
    wait_for(lambda: connected(second), "the adopted subscription")
    assert graph.subscriptions.ids() == [subscription]
    assert operations(graph, "CreateSubscription") == [201]
    assert woken == ["alice"]


def build_empty(
    make: Make, factory: GraphSources, server: HealthServer
) -> tuple[GraphWebhooks, Hooks, Woken]:
    """A channel with no watches yet, as a replica builds it before owning any lease."""
    channel, _, _ = make()
    channel.stop()
    hooks, woken = Hooks(), Woken()
    empty = GraphWebhooks(factory, [], woken, hooks, channel._config, retry=0.05)
    for path, receiver in empty.routes().items():
        server.add_route(path, receiver)
    return empty, hooks, woken


def test_a_watch_added_and_removed_while_running(
    make: Make, graph: GraphEmulator, factory: GraphSources, server: HealthServer, world: World
) -> None:
    """``add`` subscribes (once, however often called), the URL names the mailbox; ``remove``
    deletes the subscription at once and reports the watch off."""
    channel, hooks, woken = build_empty(make, factory, server)
    channel.start()
    assert channel.status() == {}
    watch = Watch(name="alice", mailbox=mailbox_config(world, graph))
    channel.add(watch)
    channel.add(watch)
    wait_for(lambda: connected(channel), "the subscription")
    [subscription] = graph.subscriptions.ids()
    assert graph.subscriptions._subscriptions[subscription].notification_url.endswith(
        f"{PATH}?mailbox=alice"
    )
    assert woken == ["alice"]
    channel.remove("alice")
    channel.remove("alice")
    assert graph.subscriptions.ids() == []
    assert "alice" not in channel.status()
    assert hooks.states[-1].state == ChannelState.OFF
    channel.add(watch)  # acquired again later
    wait_for(lambda: connected(channel), "the second subscription")
    assert len(graph.subscriptions.ids()) == 1
    channel.stop()
    assert graph.subscriptions.ids() == []


def test_a_leftover_is_adopted_only_by_the_watch_added_for_it(
    make: Make, graph: GraphEmulator, factory: GraphSources, server: HealthServer, world: World
) -> None:
    """A dead owner's subscription stays untouched by a replica that does not watch the
    mailbox, and is adopted (not duplicated) when the mailbox's watch is added there."""
    first, _, _ = make()
    first.start()
    wait_for(lambda: connected(first), "the first subscription")
    [subscription] = graph.subscriptions.ids()
    first._stopping.set()  # as if killed: nothing is deleted
    with first._lock:
        first._watched["alice"].subscription = None
    channel, _, woken = build_empty(make, factory, server)
    channel.start()
    time.sleep(0.3)  # a round of the thread: it must not touch what it does not watch
    assert graph.subscriptions.ids() == [subscription]
    channel.add(Watch(name="alice", mailbox=mailbox_config(world, graph)))
    wait_for(lambda: connected(channel), "the adopted subscription")
    assert graph.subscriptions.ids() == [subscription]
    assert operations(graph, "CreateSubscription") == [201]
    assert woken == ["alice"]


def test_lost_lease_forgets_without_deleting(
    make: Make, graph: GraphEmulator, factory: GraphSources, server: HealthServer, world: World
) -> None:
    """``remove(unsubscribe=False)``: the next owner may have adopted it, so it stays."""
    channel, _, _ = build_empty(make, factory, server)
    channel.start()
    channel.add(Watch(name="alice", mailbox=mailbox_config(world, graph)))
    wait_for(lambda: connected(channel), "the subscription")
    [subscription] = graph.subscriptions.ids()
    channel.remove("alice", unsubscribe=False)
    channel.stop()
    assert graph.subscriptions.ids() == [subscription]


def test_a_notification_for_a_mailbox_watched_elsewhere_wakes_it(
    make: Make, factory: GraphSources, server: HealthServer
) -> None:
    """Another replica's subscription: the clientState is right, the URL names the mailbox, so
    it is woken (``wake`` forwards it to the owner); an unknown name still wakes nothing."""
    channel, hooks, woken = build_empty(make, factory, server)
    channel._known = frozenset({"alice"})
    body = b'{"value": [{"subscriptionId": "elsewhere", "clientState": "s3cret-state"}]}'

    def post(query: dict[str, str]) -> int:
        answer = channel.receive(HttpRequest(path=PATH, query=query, headers={}, body=body))
        if answer.after is not None:
            answer.after()
        return answer.status

    assert post({"mailbox": "alice"}) == 202
    assert post({"mailbox": "mallory"}) == 202
    assert post({}) == 202
    assert woken == ["alice"]
    assert woken.urgent == ["alice"]  # a notification: its poll goes first
    assert hooks.count("rejected:unknown_subscription") == 2


def test_adoption_never_takes_the_watch_s_own_subscription_for_a_duplicate(
    make: Make, graph: GraphEmulator, factory: GraphSources, server: HealthServer, world: World
) -> None:
    """A watch added while a round runs is subscribed in that round and adopted in the next:
    the adoption finds its own new subscription and must keep it (two leases acquired at once
    lost one subscription to this before)."""
    channel, _, _ = build_empty(make, factory, server)
    channel.add(Watch(name="alice", mailbox=mailbox_config(world, graph)))
    watched = channel._watched["alice"]
    channel._subscribe(watched)  # what the round did (the thread is not started: no race)
    [subscription] = graph.subscriptions.ids()
    channel._adopt([watched])  # what the next round does
    assert graph.subscriptions.ids() == [subscription]
    assert operations(graph, "DeleteSubscription") == []
    assert connected(channel)
