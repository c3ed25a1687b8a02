"""``ews-listener cluster status``: the replicas sharing a PostgreSQL state database, their
mailboxes, lease ages and expiry, epochs and the last poll of each (issue 16)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from listener.cli._common import Commands, configured_settings, echo, usage
from listener.errors import EXIT_OK

__all__ = ["cmd_cluster_status", "register"]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def _age(later: datetime, value: datetime | None) -> float | None:
    return None if value is None else round((later - value).total_seconds(), 1)


def _status(settings: Any) -> dict[str, Any]:
    from listener.store import open_store  # noqa: PLC0415

    lease = settings.cluster.lease_seconds
    store = open_store(settings.state.url, create=False)
    try:
        leases = store.leases
        replicas = leases.replicas(lease=lease)
        rows = leases.leases()
        now = leases.now()
    finally:
        store.close()
    mailboxes = [
        {
            "mailbox": row.mailbox,
            "owner": row.owner if row.live else None,
            "epoch": row.epoch,
            "held_for_s": _age(now, row.acquired_at) if row.live else None,
            "expires_in_s": _age(row.expires_at, now) if row.live and row.expires_at else None,
            "last_poll_at": _iso(row.last_poll_at),
            "last_poll_ok": row.last_poll_ok,
        }
        for row in rows
    ]
    return {
        "checked_at": _iso(now),
        "lease_seconds": lease,
        "replicas": [
            {
                "replica": r.replica,
                "host": r.host,
                "pid": r.pid,
                "live": r.live,
                "started_at": _iso(r.started_at),
                "heartbeat_age_s": _age(now, r.heartbeat_at),
                "mailboxes": sorted(m["mailbox"] for m in mailboxes if m["owner"] == r.replica),
            }
            for r in replicas
        ],
        "unowned": [m["mailbox"] for m in mailboxes if m["owner"] is None],
        "mailboxes": mailboxes,
    }


def cmd_cluster_status(args: argparse.Namespace) -> int:
    status = _status(configured_settings(args))
    if args.json:
        echo(json.dumps(status, indent=2))
        return EXIT_OK
    echo(f"replicas ({len(status['replicas'])}), checked at {status['checked_at']}:")
    for r in status["replicas"]:
        state = "live" if r["live"] else "silent"
        echo(
            f"  {r['replica']:<32} {state:<6} heartbeat {r['heartbeat_age_s']:>6}s ago  "
            f"{len(r['mailboxes'])} mailbox(es)"
        )
    echo("mailboxes:")
    for m in status["mailboxes"]:
        owner = m["owner"] or "-"
        poll = m["last_poll_at"] or "never"
        ok = "" if m["last_poll_ok"] is None else (" ok" if m["last_poll_ok"] else " failed")
        lease = (
            f"held {m['held_for_s']}s, expires in {m['expires_in_s']}s" if m["owner"] else "unowned"
        )
        echo(
            f"  {m['mailbox']:<24} {owner:<32} epoch {m['epoch']:<5} {lease:<34} "
            f"last poll {poll}{ok}"
        )
    return EXIT_OK


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``cluster`` and its actions."""
    cluster = commands.add_parser(
        "cluster", parents=[common], help="several replicas on one PostgreSQL database"
    )
    actions = cluster.add_subparsers(dest="cluster_command", metavar="ACTION")
    status = actions.add_parser(
        "status",
        parents=[common],
        help="replicas, their mailboxes, lease ages and expiry, epochs and last polls",
    )
    status.add_argument("--json", action="store_true", help="JSON output")
    status.set_defaults(func=cmd_cluster_status)
    cluster.set_defaults(func=lambda _args: usage(cluster))
