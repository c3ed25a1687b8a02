"""``ews-listener check-config``: validate the configuration, print a masked summary."""

from __future__ import annotations

import argparse
import re
from typing import Any

from listener.cli._common import Commands, config_path, echo, load_config
from listener.config.models import notification_mode
from listener.errors import EXIT_OK

__all__ = ["cmd_check_config", "register"]


def _mask_url(url: str) -> str:
    """A database URL without its password."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Load and validate; print a masked summary (exit 0) or every problem (exit 78)."""
    settings = load_config(args)
    path = config_path(args)
    echo(
        f"Configuration OK: {path or 'environment only'} ({len(settings.credentials)} "
        f"credentials, {len(settings.mailboxes)} mailboxes, {len(settings.handlers)} handlers)"
    )
    echo("credentials:")
    for name, credential in sorted(settings.credentials.items()):
        if credential.secret is not None:
            how = f"secret {credential.secret.describe()}, auth_method {credential.auth_method}"
            if credential.auth_method == "basic" and credential.basic_encoding == "raw":
                how += " (raw)"
        else:
            assert credential.certificate is not None
            how = f"certificate {credential.certificate.certificate}"
        echo(
            f"  {name}: client_id {credential.client_id}, {how}, via "
            f"{credential.resolved_provider} at {credential.token_endpoint}, scopes "
            f"{' '.join(credential.scopes)}"
        )
    echo("mailboxes:")
    for name, mailbox in sorted(settings.mailboxes.items()):
        when = f"cron '{mailbox.cron}'" if mailbox.cron else f"every {mailbox.interval:g} s"
        handlers = sorted({h for route in mailbox.routes for h in route.handlers})
        state = "" if mailbox.enabled else " [disabled]"
        push = notification_mode(settings.notifications, mailbox)
        if push != "off":
            when += f" (woken by {push} notifications)"
        echo(
            f"  {name}: {mailbox.address} folder '{mailbox.folder}' over {mailbox.source} at "
            f"{mailbox.endpoint} with credential "
            f"{mailbox.credential}, {when}, start_from {mailbox.start_from}, after_success "
            f"{mailbox.after_success}, handlers {', '.join(handlers)}{state}"
        )
    echo("handlers:")
    for name, handler in sorted(settings.handlers.items()):
        echo(f"  {name}: {getattr(handler, 'type', type(handler).__name__)}")
    graph = settings.notifications.graph
    if graph is not None:
        echo(
            f"notifications: Graph posts to {graph.public_url} (clientState "
            f"{graph.client_state.describe()}), debounce {settings.notifications.debounce:g} s, "
            f"safety-net poll every {settings.notifications.healthy_interval:g} s while connected"
        )
    echo(f"state: {_mask_url(settings.state.url)}")
    echo(f"cluster: {_cluster(settings)}")
    return EXIT_OK


def _cluster(settings: Any) -> str:
    from listener.config import cluster_active  # noqa: PLC0415

    cluster = settings.cluster
    if not cluster_active(cluster, settings.state.url):
        return "off (one process)"
    who = cluster.replica_id or "<host name>-<pid>"
    return (
        f"on as {who}, lease {cluster.lease_seconds:g} s renewed every "
        f"{cluster.renew_seconds:g} s, max_connections shared by {cluster.replicas} replica(s)"
    )


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``check-config``."""
    check = commands.add_parser(
        "check-config",
        parents=[common],
        help="validate the configuration and print a masked summary (exit 78 when invalid)",
        description="Load and validate the configuration; list every problem and exit 78, or "
        "print a summary with secrets masked. Reads no secret and contacts no server.",
    )
    check.set_defaults(func=cmd_check_config)
