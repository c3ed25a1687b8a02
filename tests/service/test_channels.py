"""``build_channels``: one channel per protocol with push mailboxes, built generically; a source
without a push channel leaves its mailboxes polling and says so once."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from structlog.testing import capture_logs

from listener.cluster import Subscriptions
from listener.config.models import MailboxConfig, NotificationsConfig
from listener.daemon import build_channels
from listener.notify import NotifyHooks, Wake, Watch


def mailbox(**options: Any) -> MailboxConfig:
    return MailboxConfig(
        address="orders@contoso.com",
        credential="sales",
        routes=[{"handlers": ["log"]}],
        **options,
    )


class PushFactory:
    def __init__(self) -> None:
        self.built: list[list[str]] = []

    def notifications(self, watches: Sequence[Watch], wake: Wake, hooks: NotifyHooks) -> Any:
        self.built.append([w.name for w in watches])
        return SimpleNamespace(kind="test", watches=watches)


def app(factories: dict[str, Any], **mailboxes: MailboxConfig) -> Any:
    settings = SimpleNamespace(
        mailboxes=mailboxes, notifications=NotificationsConfig(default="push")
    )
    return SimpleNamespace(settings=settings, factory=factories.__getitem__)


def test_one_channel_per_kind_with_only_the_push_mailboxes() -> None:
    """Graph mailboxes with push share one channel; a mailbox set to "off" is left out."""
    graph = PushFactory()
    built = build_channels(
        app(
            {"graph": graph},
            a=mailbox(source="graph"),
            b=mailbox(source="graph", notifications="off"),
            c=mailbox(source="graph", notifications="webhook"),
        ),
        ["a", "b", "c"],
        lambda name: None,
        NotifyHooks(),
    )
    assert graph.built == [["a", "c"]]
    assert len(built) == 1


def test_a_source_without_a_push_channel_keeps_polling() -> None:
    """An EWS factory of this build without ``notifications``: no channel, one warning."""
    with capture_logs() as logs:
        built = build_channels(
            app({"ews": object()}, a=mailbox(), b=mailbox(notifications="streaming")),
            ["a", "b"],
            lambda name: None,
            NotifyHooks(),
        )
    assert built == []
    assert [(e["event"], e["mailboxes"]) for e in logs] == [
        ("notifications.unavailable", ["a", "b"])
    ]


class Recording:
    """A channel that records ``add`` / ``remove``."""

    kind = "test"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool]] = []

    def add(self, watch: Watch) -> None:
        self.calls.append(("add", watch.name, True))

    def remove(self, name: str, *, unsubscribe: bool = True) -> None:
        self.calls.append(("remove", name, unsubscribe))


def test_with_replicas_channels_start_empty_and_watches_follow_the_lease() -> None:
    """``watched``: the channel is built with no watches and each push mailbox is listed with
    its channel; ``Subscriptions`` adds a watch on ``acquired``, removes (unsubscribing) on
    ``releasing`` / ``released`` and only forgets it on ``lost``; other mailboxes are ignored."""
    graph = PushFactory()
    watched: dict[str, Any] = {}
    built = build_channels(
        app({"graph": graph}, a=mailbox(source="graph"), b=mailbox(source="graph")),
        ["a", "b"],
        lambda name: None,
        NotifyHooks(),
        watched=watched,
    )
    assert graph.built == [[]]
    assert sorted(watched) == ["a", "b"]
    assert all(channel is built[0] and w.name == n for n, (channel, w) in watched.items())
    channel = Recording()
    listener = Subscriptions({n: (channel, w) for n, (_, w) in watched.items()})
    listener.acquired("a", 1)
    listener.acquired("zzz", 1)  # not a push mailbox
    listener.releasing("a")
    listener.released("a")
    listener.acquired("b", 2)
    listener.lost("b")
    assert channel.calls == [
        ("add", "a", True),
        ("remove", "a", True),
        ("remove", "a", True),
        ("add", "b", True),
        ("remove", "b", False),
    ]
