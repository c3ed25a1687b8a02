"""The service commands of ``ews-listener``: run, once, mailbox test, dead-letters, schema, health.

Registered into the main parser by :func:`register` (see ``listener/cli.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC
from typing import Any, TextIO

from listener.errors import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
)

__all__ = ["register"]

Command = Callable[[argparse.Namespace], int]


def _out(args: argparse.Namespace) -> TextIO:
    return getattr(args, "stdout", None) or sys.stdout


def _settings(args: argparse.Namespace) -> Any:
    """Load the configuration and apply its logging section (command-line flags win)."""
    from listener.cli import load_config  # noqa: PLC0415 - cli imports this module
    from listener.observability import configure_logging  # noqa: PLC0415

    settings = load_config(args)
    configure_logging(
        fmt=args.log_format or settings.service.log_format,
        level=args.log_level or settings.service.log_level,
    )
    return settings


# --- run / once --------------------------------------------------------------------------------


def _startup_errors(command: Command) -> Command:
    """Map what can go wrong while building the app to exit codes systemd can act on.

    A handler that cannot be built (bad import path, failing factory) is a configuration error
    (78: do not restart); a state database that cannot be opened is "unavailable" (69).
    """

    def wrapped(args: argparse.Namespace) -> int:
        from listener.handlers.errors import HandlerConfigError  # noqa: PLC0415
        from listener.store import StoreError  # noqa: PLC0415

        try:
            return command(args)
        except HandlerConfigError as e:
            print(f"configuration error: {e}", file=sys.stderr)
            return EXIT_CONFIG
        except StoreError as e:
            print(f"state store unavailable: {e}", file=sys.stderr)
            return EXIT_UNAVAILABLE

    return wrapped


@_startup_errors
def cmd_run(args: argparse.Namespace) -> int:
    from listener.daemon import run_daemon  # noqa: PLC0415 - imports exchangelib

    settings = _settings(args)
    return run_daemon(settings, http_port=args.metrics_port, fail_fast=args.fail_fast)


@_startup_errors
def cmd_once(args: argparse.Namespace) -> int:
    from listener.daemon import run_once, summary  # noqa: PLC0415

    settings = _settings(args)
    try:
        results = run_once(settings, mailboxes=args.mailbox or None)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    code, report = summary(results)
    out = _out(args)
    if args.json:
        print(json.dumps(report, indent=2, default=str), file=out)
    else:
        for name, r in report["mailboxes"].items():
            status = "ok" if r["ok"] else f"FAILED: {r['error']}"
            print(
                f"{name}: handed over {r['handed_over']}, failed {r['failed']}, "
                f"dead-lettered {r['dead_lettered']}, already done {r['already_done']} - {status}",
                file=out,
            )
    return code


# --- mailbox test ------------------------------------------------------------------------------


@_startup_errors
def cmd_mailbox_test(args: argparse.Namespace) -> int:
    settings = _settings(args)
    return check_mailbox(settings, args.address, _out(args))


def check_mailbox(settings: Any, wanted: str, out: TextIO, *, credential: str | None = None) -> int:
    """Token, impersonation, folder and item count of the mailbox called or addressed ``wanted``."""
    from listener.app import App  # noqa: PLC0415

    wanted = wanted.lower()
    names = [
        n
        for n, m in settings.mailboxes.items()
        if (n.lower() == wanted or m.address.lower() == wanted)
        and (credential is None or m.credential == credential)
    ]
    if not names:
        which = f" using credential {credential!r}" if credential else ""
        print(f"error: no mailbox {wanted!r}{which} in the configuration", file=sys.stderr)
        return EXIT_USAGE
    app = App(settings, store=_NullStore(), handlers={})  # type: ignore[arg-type]
    ok = True
    try:
        for name in names:
            mailbox = settings.mailboxes[name]
            print(f"{name} ({mailbox.address}, credential {mailbox.credential}):", file=out)
            ok = _mailbox_steps(app, name, mailbox, out) and ok
    finally:
        app.close()
    return EXIT_OK if ok else EXIT_UNEXPECTED


def _mailbox_steps(app: Any, name: str, mailbox: Any, out: TextIO) -> bool:
    """Each step on one line; stop at the first that fails."""
    source = app.connections.source(app.target(name, mailbox))
    step = "token"
    try:
        token = app.providers.get(mailbox.credential).get_token()
        print(f"  token   ok   expires {token.expires_at.isoformat(timespec='seconds')}", file=out)
        step = "folder"
        folder = source.watched_folder()
        print(f"  folder  ok   {source.folder!r} opened with impersonation", file=out)
        step = "items"
        total = folder.total_count if folder.total_count is not None else "?"
        unread = len(source.unread())
        print(f"  items   ok   {total} item(s), {unread} unread", file=out)
    except Exception as e:
        print(f"  {step:<7} FAIL {type(e).__name__}: {e}", file=out)
        return False
    return True


class _NullStore:
    """``mailbox test`` touches no state."""

    def close(self) -> None:
        return


# --- dead letters ------------------------------------------------------------------------------


@contextmanager
def _state(args: argparse.Namespace) -> Iterator[Any]:
    """The configured state store, for the dead-letter commands; closed afterwards."""
    from listener.store import open_store  # noqa: PLC0415

    settings = _settings(args)
    store = open_store(settings.state.url)
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
    out = _out(args)
    if args.json:
        print(json.dumps([_letter_dict(d) for d in letters], indent=2), file=out)
        return EXIT_OK
    if not letters:
        print("no dead letters", file=out)
    for d in letters:
        kind = "permanent" if d.permanent else f"{d.attempts} attempts"
        print(
            f"#{d.id:<5} {d.mailbox:<16} {kind:<12} {d.subject[:40]!r:<42} {d.error[:80]}", file=out
        )
    return EXIT_OK


def cmd_dead_letters_show(args: argparse.Namespace) -> int:
    with _state(args) as store:
        letter = store.dead_letter(args.id)
    if letter is None:
        print(f"error: no dead letter #{args.id}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(_letter_dict(letter), indent=2), file=_out(args))
    return EXIT_OK


def _selected(args: argparse.Namespace, store: Any) -> list[Any]:
    letters = store.dead_letters(args.mailbox)
    if args.all:
        return list(letters)
    wanted = set(args.ids)
    return [d for d in letters if d.id in wanted]


@_startup_errors
def cmd_dead_letters_replay(args: argparse.Namespace) -> int:
    from listener.app import App  # noqa: PLC0415

    if not args.all and not args.ids:
        print("error: name dead-letter ids or pass --all", file=sys.stderr)
        return EXIT_USAGE
    settings = _settings(args)
    app = App(settings)
    out = _out(args)
    ok = True
    try:
        letters = _selected(args, app.store)
        by_mailbox: dict[str, list[Any]] = {}
        for letter in letters:
            by_mailbox.setdefault(letter.mailbox, []).append(letter)
        for name, group in sorted(by_mailbox.items()):
            poller = app.pollers.get(name)
            if poller is None:
                print(f"{name}: skipped, the mailbox is not configured or disabled", file=out)
                ok = False
                continue
            result = poller.replay(group)
            print(
                f"{name}: replayed {len(group)}: handed over {result.handed_over}, "
                f"already done {result.already_done}, failed again {result.failed}, "
                f"dead-lettered again {result.dead_lettered}",
                file=out,
            )
            ok = ok and result.failed == 0 and result.dead_lettered == 0
    finally:
        app.close()
    return EXIT_OK if ok else EXIT_TEMPFAIL


def cmd_dead_letters_purge(args: argparse.Namespace) -> int:
    if not args.all and not args.ids:
        print("error: name dead-letter ids or pass --all", file=sys.stderr)
        return EXIT_USAGE
    with _state(args) as store:
        removed = store.remove_dead_letters([d.id for d in _selected(args, store)])
    print(f"purged {removed} dead letter(s)", file=_out(args))
    return EXIT_OK


# --- schema / health ---------------------------------------------------------------------------


def cmd_schema(args: argparse.Namespace) -> int:
    from listener.model import message_json_schema  # noqa: PLC0415

    print(json.dumps(message_json_schema(), indent=2), file=_out(args))
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from listener.observability.health import check_health, health_url  # noqa: PLC0415

    url = args.url
    if url is None:
        host, port = "127.0.0.1", args.port
        if port is None:
            settings = _settings(args)
            host, port = settings.service.http_host, settings.service.http_port
        if port is None:
            print("error: no health endpoint: pass --url or set service.http_port", file=sys.stderr)
            return EXIT_CONFIG
        url = health_url(host, port, "/readyz")
    ok, text = check_health(url, timeout=args.timeout)
    print(text, file=_out(args))
    return EXIT_OK if ok else EXIT_UNEXPECTED


def cmd_emulator(args: argparse.Namespace) -> int:
    from listener.emulator.cli import main as emulator_main  # noqa: PLC0415

    return int(emulator_main(args.emulator_args))


# --- registration ------------------------------------------------------------------------------


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    """Add the service commands to the main parser's sub-parsers."""
    run = commands.add_parser(
        "run",
        parents=[common],
        help="run the daemon until SIGTERM/SIGINT",
        description="Poll every enabled mailbox on its schedule and hand new messages to their "
        "handlers until SIGTERM or SIGINT; then stop scheduling, let in-flight handlers finish "
        "(service.shutdown_grace), persist and exit 0. Exit 78 on a configuration error, 69 with "
        "--fail-fast when a credential cannot get a token at start-up.",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /healthz /readyz /metrics on this port (default: service.http_port)",
    )
    run.add_argument(
        "--fail-fast",
        action="store_true",
        help="exit 69 when a credential cannot "
        "get a token at start-up (default: keep running, that mailbox backs off)",
    )
    run.set_defaults(func=cmd_run)

    once = commands.add_parser(
        "once",
        parents=[common],
        help="poll every mailbox once and exit (cron, workflow steps)",
        description="Poll every enabled mailbox once, hand over what is new, retry what is due, "
        "and exit: 0 when every mailbox polled successfully, 75 when one failed (its error is in "
        "the summary), 78 on a configuration error.",
    )
    once.add_argument("--json", action="store_true", help="print a machine-readable summary")
    once.add_argument(
        "--mailbox", action="append", metavar="NAME", help="only this mailbox (repeatable)"
    )
    once.set_defaults(func=cmd_once)

    mailbox = commands.add_parser("mailbox", parents=[common], help="check configured mailboxes")
    mailbox_commands = mailbox.add_subparsers(dest="mailbox_command", metavar="ACTION")
    test = mailbox_commands.add_parser(
        "test",
        parents=[common],
        help="token, impersonation, folder and item count of one mailbox",
        description="Get a token, open the mailbox with impersonation, resolve its folder and "
        "count its items. Exit 0 when every step works, 1 otherwise.",
    )
    test.add_argument("address", help="the mailbox's address or configured name")
    test.set_defaults(func=cmd_mailbox_test)
    mailbox.set_defaults(func=lambda a: _help(mailbox))

    dead = commands.add_parser("dead-letters", parents=[common], help="inspect and replay failures")
    dead_commands = dead.add_subparsers(dest="dead_command", metavar="ACTION")
    listing = dead_commands.add_parser("list", parents=[common], help="list dead letters")
    listing.add_argument("--mailbox", help="only this mailbox (configured name)")
    listing.add_argument("--json", action="store_true", help="JSON output")
    listing.set_defaults(func=cmd_dead_letters_list)
    show = dead_commands.add_parser("show", parents=[common], help="show one dead letter")
    show.add_argument("id", type=int)
    show.set_defaults(func=cmd_dead_letters_show)
    for name, func, text in (
        ("replay", cmd_dead_letters_replay, "hand dead letters over again"),
        ("purge", cmd_dead_letters_purge, "delete dead letters (the mail stays in the mailbox)"),
    ):
        sub = dead_commands.add_parser(name, parents=[common], help=text, description=text)
        sub.add_argument("ids", type=int, nargs="*", help="dead-letter ids (see list)")
        sub.add_argument("--all", action="store_true", help="every dead letter (of --mailbox)")
        sub.add_argument("--mailbox", help="only this mailbox (configured name)")
        sub.set_defaults(func=func)
    dead.set_defaults(func=lambda a: _help(dead))

    schema = commands.add_parser("schema", parents=[common], help="print JSON Schemas")
    schema.add_argument("what", choices=["message"], help="message: the event handlers receive")
    schema.set_defaults(func=cmd_schema)

    health = commands.add_parser(
        "health",
        parents=[common],
        help="exit 0 when /readyz says ready, 1 otherwise (Docker HEALTHCHECK)",
    )
    health.add_argument("--url", help="readiness URL (default: http://127.0.0.1:PORT/readyz)")
    health.add_argument("--port", type=int, help="port of the health server")
    health.add_argument("--timeout", type=float, default=5.0)
    health.set_defaults(func=cmd_health)

    emulator = commands.add_parser(
        "emulator",
        help="run the bundled EWS emulator and token server (see --help of the emulator)",
        add_help=False,
    )
    emulator.add_argument("emulator_args", nargs=argparse.REMAINDER)
    emulator.set_defaults(func=cmd_emulator)

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="the emulator with demo mailboxes and a feed, and the daemon watching them",
    )
    demo.add_argument("--feed", type=float, default=0.5, help="messages per second")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from listener.demo import run_demo  # noqa: PLC0415

    return run_demo(args)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE
