"""``ews-listener dead-letters list|show|replay|purge``: inspect and replay failures."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC
from typing import Any

from listener.cli._common import Commands, configured_settings, echo, startup_errors, usage
from listener.errors import EXIT_OK, EXIT_TEMPFAIL, EXIT_USAGE

__all__ = [
    "cmd_dead_letters_list",
    "cmd_dead_letters_purge",
    "cmd_dead_letters_replay",
    "cmd_dead_letters_show",
    "register",
]


@contextmanager
def _state(args: argparse.Namespace) -> Iterator[Any]:
    """The configured state store, for the dead-letter commands; closed afterwards."""
    from listener.store import open_store  # noqa: PLC0415

    store = open_store(configured_settings(args).state.url)
    try:
        yield store
    finally:
        store.close()


def _letter_dict(letter: Any) -> dict[str, Any]:
    data = asdict(letter)
    data["handlers"] = list(letter.handlers)
    data["created_at"] = letter.created_at.astimezone(UTC).isoformat()
    return data


def cmd_dead_letters_list(args: argparse.Namespace) -> int:
    with _state(args) as store:
        letters = store.dead_letters(args.mailbox)
    if args.json:
        echo(json.dumps([_letter_dict(d) for d in letters], indent=2))
        return EXIT_OK
    if not letters:
        echo("no dead letters")
    for d in letters:
        kind = "permanent" if d.permanent else f"{d.attempts} attempts"
        echo(f"#{d.id:<5} {d.mailbox:<16} {kind:<12} {d.subject[:40]!r:<42} {d.error[:80]}")
    return EXIT_OK


def cmd_dead_letters_show(args: argparse.Namespace) -> int:
    with _state(args) as store:
        letter = store.dead_letter(args.id)
    if letter is None:
        echo(f"error: no dead letter #{args.id}", err=True)
        return EXIT_USAGE
    echo(json.dumps(_letter_dict(letter), indent=2))
    return EXIT_OK


def _selected(args: argparse.Namespace, store: Any) -> list[Any]:
    letters = store.dead_letters(args.mailbox)
    if args.all:
        return list(letters)
    wanted = set(args.ids)
    return [d for d in letters if d.id in wanted]


@startup_errors
def cmd_dead_letters_replay(args: argparse.Namespace) -> int:
    from listener.app import App  # noqa: PLC0415

    if not args.all and not args.ids:
        echo("error: name dead-letter ids or pass --all", err=True)
        return EXIT_USAGE
    app = App(configured_settings(args))
    ok = True
    try:
        letters = _selected(args, app.store)
        by_mailbox: dict[str, list[Any]] = {}
        for letter in letters:
            by_mailbox.setdefault(letter.mailbox, []).append(letter)
        for name, group in sorted(by_mailbox.items()):
            poller = app.pollers.get(name)
            if poller is None:
                echo(f"{name}: skipped, the mailbox is not configured or disabled")
                ok = False
                continue
            result = poller.replay(group)
            echo(
                f"{name}: replayed {len(group)}: handed over {result.handed_over}, "
                f"already done {result.already_done}, failed again {result.failed}, "
                f"dead-lettered again {result.dead_lettered}"
            )
            ok = ok and result.failed == 0 and result.dead_lettered == 0
    finally:
        app.close()
    return EXIT_OK if ok else EXIT_TEMPFAIL


def cmd_dead_letters_purge(args: argparse.Namespace) -> int:
    if not args.all and not args.ids:
        echo("error: name dead-letter ids or pass --all", err=True)
        return EXIT_USAGE
    with _state(args) as store:
        removed = store.remove_dead_letters([d.id for d in _selected(args, store)])
    echo(f"purged {removed} dead letter(s)")
    return EXIT_OK


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``dead-letters`` and its actions."""
    dead = commands.add_parser("dead-letters", parents=[common], help="inspect and replay failures")
    actions = dead.add_subparsers(dest="dead_command", metavar="ACTION")
    listing = actions.add_parser("list", parents=[common], help="list dead letters")
    listing.add_argument("--mailbox", help="only this mailbox (configured name)")
    listing.add_argument("--json", action="store_true", help="JSON output")
    listing.set_defaults(func=cmd_dead_letters_list)
    show = actions.add_parser("show", parents=[common], help="show one dead letter")
    show.add_argument("id", type=int)
    show.set_defaults(func=cmd_dead_letters_show)
    for name, func, text in (
        ("replay", cmd_dead_letters_replay, "hand dead letters over again"),
        ("purge", cmd_dead_letters_purge, "delete dead letters (the mail stays in the mailbox)"),
    ):
        sub = actions.add_parser(name, parents=[common], help=text, description=text)
        sub.add_argument("ids", type=int, nargs="*", help="dead-letter ids (see list)")
        sub.add_argument("--all", action="store_true", help="every dead letter (of --mailbox)")
        sub.add_argument("--mailbox", help="only this mailbox (configured name)")
        sub.set_defaults(func=func)
    dead.set_defaults(func=lambda _args: usage(dead))
