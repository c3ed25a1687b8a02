"""``ews-listener migration plan``: which mailboxes still use EWS on Exchange Online, and the
TOML lines that move each of them to Microsoft Graph.

Exchange Online refuses EWS to applications that are not on the tenant's allow-list since
2026-10-01 and turns EWS off on 2027-04-01 (Microsoft's EWS retirement announcement for Exchange
Online); on-premises Exchange keeps EWS, so its mailboxes have nothing to change. Reads the
configuration only: no secret, no server.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from listener.cli._common import Commands, config_path, echo, load_config, usage
from listener.errors import EXIT_OK, EXIT_UNEXPECTED

if TYPE_CHECKING:
    from listener.config import CredentialConfig, MailboxConfig, Settings

__all__ = ["EWS_BLOCKED", "EWS_RETIRED", "cmd_migration_plan", "register"]

EWS_BLOCKED = date(2026, 10, 1)  # apps not on the tenant's EWS allow-list are refused
EWS_RETIRED = date(2027, 4, 1)  # EWS off in Exchange Online for every app

_ROLE_HINTS = (
    "# and in the app registration: the Microsoft Graph application permission Mail.ReadWrite,",
    "# with admin consent (`ews-listener credentials validate {credential}` then shows it)",
)


@dataclass
class _Step:
    """One mailbox's verdict and, when it has to move, the lines to change."""

    name: str
    mailbox: MailboxConfig
    verdict: str
    move: bool = False
    lines: list[str] = field(default_factory=list)


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def _raw(path: Path | None) -> Mapping[str, Any]:
    """The file's tables as written (to tell a given ``endpoint`` from the default); {} if none."""
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}  # load_settings has read it already; environment-only keys are not shown


def _table(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _plan(settings: Settings, raw: Mapping[str, Any]) -> list[_Step]:
    from listener.auth.resources import (  # noqa: PLC0415 - keeps --help fast
        exchange_online_host,
        graph_host_for,
        is_graph,
        resource_of,
    )
    from listener.config import DEFAULT_GRAPH_ENDPOINT  # noqa: PLC0415

    raw_mailboxes = _table(raw, "mailboxes")
    raw_credentials = _table(raw, "credentials")
    steps: list[_Step] = []
    added: dict[str, str] = {}  # credential → the Graph scope already suggested
    for name, mailbox in sorted(settings.mailboxes.items()):
        if mailbox.source == "graph":
            steps.append(_Step(name, mailbox, "Microsoft Graph: nothing to change"))
            continue
        if not exchange_online_host(mailbox.endpoint):
            steps.append(
                _Step(
                    name,
                    mailbox,
                    "not Exchange Online (on-premises Exchange, or the emulator): stays on EWS",
                )
            )
            continue
        step = _Step(name, mailbox, "Exchange Online over EWS: move to Microsoft Graph", True)
        given = _table(raw_mailboxes, name)
        graph_endpoint = f"https://{graph_host_for(mailbox.endpoint)}/v1.0"
        step.lines.append(f"[mailboxes.{name}]")
        step.lines.append('+ source = "graph"')
        if "endpoint" in given:
            step.lines.append(f"- endpoint = {_toml(given['endpoint'])}")
        if graph_endpoint != DEFAULT_GRAPH_ENDPOINT:
            step.lines.append(f"+ endpoint = {_toml(graph_endpoint)}")
        if mailbox.version is not None:
            step.lines.append(f"- version = {_toml(given.get('version', mailbox.version))}")
        credential: CredentialConfig = settings.credentials[mailbox.credential]
        has_graph = any(
            (resource := resource_of(scope)) is not None and is_graph(resource)
            for scope in credential.scopes
        )
        if not has_graph and mailbox.credential not in added:
            scope = f"https://{graph_host_for(mailbox.endpoint)}/.default"
            added[mailbox.credential] = scope
            step.lines.append(f"[credentials.{mailbox.credential}]")
            written = _table(raw_credentials, mailbox.credential).get("scopes", credential.scopes)
            step.lines.append(f"- scopes = {_toml(written)}")
            step.lines.append(f"+ scopes = {_toml([*credential.scopes, scope])}")
            step.lines += [hint.format(credential=mailbox.credential) for hint in _ROLE_HINTS]
        elif mailbox.credential in added:
            step.lines.append(
                f"# credentials.{mailbox.credential}: the scope {added[mailbox.credential]!r} "
                "added above serves this mailbox too"
            )
        steps.append(step)
    return steps


def _deadline(today: date) -> str:
    left = (EWS_RETIRED - today).days
    blocked = (
        f"since {EWS_BLOCKED} Exchange Online refuses EWS to apps not on the tenant's allow-list"
        if today >= EWS_BLOCKED
        else f"from {EWS_BLOCKED} Exchange Online refuses EWS to apps not on the tenant's "
        f"allow-list ({(EWS_BLOCKED - today).days} days)"
    )
    if left > 0:
        return f"EWS in Exchange Online ends on {EWS_RETIRED}: {left} days left; {blocked}."
    return f"EWS in Exchange Online ended on {EWS_RETIRED}: these mailboxes get no mail."


def cmd_migration_plan(args: argparse.Namespace) -> int:
    """Print each mailbox's protocol and, for EWS mailboxes at Exchange Online, what to change."""
    settings = load_config(args)
    steps = _plan(settings, _raw(config_path(args)))
    today: date = args.today or datetime.now(UTC).date()
    if not steps:
        echo("no mailboxes configured: nothing to move")
        return EXIT_OK
    for step in steps:
        mailbox = step.mailbox
        state = "" if mailbox.enabled else " [disabled]"
        echo(f"{step.name} ({mailbox.address}{state}): {mailbox.source} at {mailbox.endpoint}")
        echo(f"  {step.verdict}")
        for line in step.lines:
            echo(f"    {line}")
    moving = [step.name for step in steps if step.move]
    echo()
    if not moving:
        echo("Nothing left to move: no mailbox uses EWS on Exchange Online.")
        return EXIT_OK
    count = f"{len(moving)} mailbox{'es' if len(moving) != 1 else ''}"
    echo(f"{count} still use{'s' if len(moving) == 1 else ''} EWS on Exchange Online:")
    echo(f"  {', '.join(moving)}")
    echo(_deadline(today))
    echo("After the change: `ews-listener check-config`, then `ews-listener mailbox test ADDRESS`.")
    echo(
        "Keep each mailbox's name: its ledger and retries carry over, so mail already handed "
        "over is not handed over again (a message's idempotency key does not depend on the "
        "protocol)."
    )
    return EXIT_UNEXPECTED


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2026-12-01, got {text!r}") from None


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``migration plan``."""
    migration = commands.add_parser(
        "migration",
        parents=[common],
        help="plan the move of Exchange Online mailboxes from EWS to Microsoft Graph",
    )
    actions = migration.add_subparsers(dest="migration_command", metavar="ACTION")
    plan = actions.add_parser(
        "plan",
        parents=[common],
        help="list the mailboxes that still use EWS on Exchange Online and what to change",
        description="For every configured mailbox: its address, source and endpoint, whether it "
        "is Exchange Online or on-premises Exchange (which keeps EWS), and for Exchange Online "
        "mailboxes still on EWS the TOML lines to change (source, endpoint, version, the "
        f"credential's Graph scope) and the days left until {EWS_RETIRED}, when EWS ends in "
        "Exchange Online. Reads no secret and contacts no server. Exit 0 when nothing is left "
        "to move, 1 when some mailbox still has to move, 78 when the configuration is invalid.",
    )
    plan.add_argument(
        "--today",
        type=_day,
        default=None,
        metavar="YYYY-MM-DD",
        help="count the days left from this date (default: today, UTC)",
    )
    plan.set_defaults(func=cmd_migration_plan)
    migration.set_defaults(func=lambda _args: usage(migration))
