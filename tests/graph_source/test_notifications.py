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
from listener.notify import ChannelState, ChannelStatus, NotifyHooks, Watch
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


Make = Callable[..., tuple[GraphWebhooks, Hooks, list[str]]]


@pytest.fixture
def make(
    world: World, graph: GraphEmulator, factory: GraphSources, server: HealthServer
) -> Iterator[Make]:
    made: list[GraphWebhooks] = []

    def build(
        *, mount: bool = True, renew_soon: bool = False
    ) -> tuple[GraphWebhooks, Hooks, list[str]]:
        config = SimpleNamespace(
            public_url=f"http://127.0.0.1:{server.port}{PATH}",
            client_state=InlineSecret(source="inline", value="s3cret-state"),
            lifetime_minutes=60,
            renew_before_minutes=10,
        )
        hooks, woken = Hooks(), []
        watch = Watch(name="alice", mailbox=mailbox_config(world, graph))
        channel = GraphWebhooks(factory, [watch], woken.append, hooks, config, retry=0.05)
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
