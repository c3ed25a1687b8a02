"""``[notifications]``: push notifications that only wake the poll (issue 15), and their checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, field_validator, model_validator

from listener.config._base import Model
from listener.config._mailboxes import MailboxConfig
from listener.config._service import ServiceConfig
from listener.secrets import SecretSpec
from listener.secrets._base import check_url

__all__ = [
    "EwsStreamingConfig",
    "GraphNotificationsConfig",
    "NotificationsConfig",
    "notification_mode",
    "notification_problems",
]


class GraphNotificationsConfig(Model):
    """Graph change notifications: where Graph posts them and the secret it echoes back."""

    # The HTTPS URL Graph can reach that ends at this service's /notifications/graph (directly,
    # or through a reverse proxy: see the README).
    public_url: str
    client_state: SecretSpec
    # Subscription lifetime asked for; Graph's cap for messages is 4230 minutes (about 70 h).
    lifetime_minutes: int = Field(default=4230, ge=5, le=4230)
    # Renewed this long before expiry.
    renew_before_minutes: int = Field(default=60, ge=1)

    @field_validator("public_url")
    @classmethod
    def _public(cls, value: str) -> str:
        return check_url(value, what="public_url")

    @model_validator(mode="after")
    def _renew_within_lifetime(self) -> GraphNotificationsConfig:
        if self.renew_before_minutes >= self.lifetime_minutes:
            raise ValueError(
                f"renew_before_minutes ({self.renew_before_minutes}) must be shorter than "
                f"lifetime_minutes ({self.lifetime_minutes})"
            )
        return self


class EwsStreamingConfig(Model):
    """EWS streaming subscriptions (on-premises Exchange and allow-listed Exchange Online)."""

    # GetStreamingEvents ConnectionTimeout, minutes; Exchange caps a connection at 30.
    connection_minutes: int = Field(default=30, ge=1, le=30)
    # Subscriptions per GetStreamingEvents request; Exchange allows at most 200.
    subscriptions_per_connection: int = Field(default=200, ge=1, le=200)


class NotificationsConfig(Model):
    """Push notifications that only wake the poll; the cursor stays the truth (issue 15)."""

    # For every mailbox that does not say: "push" = EWS streaming or Graph webhook by source.
    default: Literal["off", "push"] = "off"
    # A burst of notifications within this many seconds costs one poll.
    debounce: float = Field(default=0.25, ge=0, le=60)
    # While a mailbox's channel is connected, the safety-net poll runs this often instead of the
    # mailbox's interval (never more often than the interval); a degraded channel falls back.
    healthy_interval: float = Field(default=300.0, gt=0)
    ews: EwsStreamingConfig = EwsStreamingConfig()
    graph: GraphNotificationsConfig | None = None


_PUSH = {"ews": "streaming", "graph": "webhook"}


def notification_mode(notifications: NotificationsConfig, mailbox: MailboxConfig) -> str:
    """ "off", "streaming" or "webhook": what wakes ``mailbox``'s poll besides its interval."""
    if mailbox.notifications is not None:
        return mailbox.notifications
    return _PUSH[mailbox.source] if notifications.default == "push" else "off"


def notification_problems(
    notifications: NotificationsConfig,
    mailboxes: Mapping[str, MailboxConfig],
    service: ServiceConfig | None = None,
) -> list[tuple[tuple[str, ...], str]]:
    """A push mode the mailbox's protocol does not have, or a webhook with nowhere to listen."""
    problems: list[tuple[tuple[str, ...], str]] = []
    for name, mailbox in mailboxes.items():
        mode = mailbox.notifications
        if mode is None or mode == "off" or _PUSH[mailbox.source] == mode:
            continue
        problems.append(
            (
                ("mailboxes", name, "notifications"),
                f"{mode!r} is not available over {mailbox.source!r}: use "
                f'{_PUSH[mailbox.source]!r} (or "off")',
            )
        )
    webhooks = [
        name
        for name, mailbox in mailboxes.items()
        if mailbox.enabled and notification_mode(notifications, mailbox) == "webhook"
    ]
    if webhooks and notifications.graph is None:
        problems.append(
            (
                ("notifications", "graph"),
                f"mailbox(es) {', '.join(sorted(webhooks))} receive Graph change notifications, "
                "which need [notifications.graph] public_url and client_state",
            )
        )
    if webhooks and service is not None and service.http_port is None:
        problems.append(
            (
                ("service", "http_port"),
                f"mailbox(es) {', '.join(sorted(webhooks))} receive Graph change notifications "
                "on this service's HTTP server (/notifications/graph): set http_port",
            )
        )
    return problems
