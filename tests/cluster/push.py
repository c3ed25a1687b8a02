"""What the push-notification tests of two replicas share (``test_notifications.py`` for Graph
webhooks, ``test_streaming.py`` for EWS streaming): the replica's configuration and the check
that every mailbox's channel lives at its owner only."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from listener.store import SqlStateStore
from tests.cluster.test_replicas import CLUSTER, owners
from tests.configs import push_service
from tests.e2e.conftest import World, metric, polls_ok

HOUR = 3600


def address(name: str) -> str:
    return f"{name}@contoso.com"


def configure(
    world: World,
    pg_url: str,
    port: int,
    name: str,
    mailboxes: Sequence[str],
    mailbox: Mapping[str, object],
    notifications: Sequence[str] = (),
) -> Path:
    """Replica ``name``'s configuration on PostgreSQL: ``mailboxes`` polled hourly (and hourly
    while their channel is connected) with the keys of ``mailbox``, the HTTP server on ``port``;
    ``notifications``: lines after the ``[notifications]`` table."""
    extra = "\n".join([*push_service(port, HOUR, *notifications), CLUSTER])
    boxes: dict[str, dict[str, object]] = {
        box: {"address": address(box), "credential": "sales", "interval": HOUR, **mailbox}
        for box in mailboxes
    }
    path = world.config(boxes, extra=extra, name=f"{name}.toml")
    text = path.read_text().replace(f'url = "sqlite:///{world.state}"', f'url = "{pg_url}"')
    path.write_text(text)
    return path


def connected(channel: str, port: int, name: str) -> bool:
    """Mailbox ``name``'s ``channel`` is connected at the replica serving ``port``."""
    labels = f'channel="{channel}",mailbox="{name}",state="connected"'
    return metric(port, f"ews_listener_notification_channel_state{{{labels}}}") == 1.0


def settled(
    channel: str,
    subscribed: Callable[[], Mapping[str, int]],
    mailboxes: Sequence[str],
    state: SqlStateStore,
    ports: Mapping[str, int],
) -> bool:
    """One subscription per mailbox (``subscribed``: the emulator's, per mailbox), its
    ``channel`` connected at its owner and not elsewhere, its first poll done."""
    own = owners(state)
    if any(own.get(n) not in ports for n in mailboxes) or dict(subscribed()) != dict.fromkeys(
        mailboxes, 1
    ):
        return False
    for name in mailboxes:
        for replica, port in ports.items():
            if connected(channel, port, name) != (own[name] == replica):
                return False
        if polls_ok(ports[str(own[name])], name) < 1:
            return False
    return True
