"""The parser that gathers every command module, and ``main``, which runs one command."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from listener import __version__
from listener.cli import (
    check_config,
    cluster,
    credentials,
    dead_letters,
    demo,
    mailbox,
    migration,
    schema,
    service,
)
from listener.cli._common import Command, Parser, echo, global_options
from listener.config import ConfigError
from listener.errors import EXIT_CONFIG, EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, ListenerError

__all__ = ["build_parser", "main", "parse"]

# In the order ``--help`` lists them.
_COMMAND_MODULES = (
    check_config,
    credentials,
    service,
    mailbox,
    migration,
    dead_letters,
    cluster,
    schema,
    demo,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; each command module's ``register`` adds its sub-parsers."""
    parser = Parser(
        prog="ews-listener",
        description="Watch Exchange mailboxes over EWS and hand new messages to handlers.",
    )
    parser.add_argument("--version", action="version", version=f"ews-listener {__version__}")
    global_options(parser, suppress=False)
    common = Parser(add_help=False)
    global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMAND_MODULES:
        module.register(commands, common)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; raises ``SystemExit`` as ``parse_args`` does.

    A command that passes its arguments on (``emulator``: ``set_defaults(passthrough=NAME)``)
    gets everything after its name as the list ``NAME``. ``nargs=argparse.REMAINDER`` was meant
    to, but does not take a first argument that looks like an option (bpo-17050): ``emulator
    --seed demo`` failed with "unrecognized arguments" on 3.11 to 3.13 and the compose file's
    emulator could not start. ``parse_known_args`` keeps the rest, in order. Guarded by
    ``tests/docs/test_command_lines.py``.
    """
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    passthrough = getattr(args, "passthrough", None)
    if passthrough is not None:
        setattr(args, passthrough, rest)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def _configure_logging(args: argparse.Namespace) -> None:
    try:
        from listener.observability import configure_logging  # noqa: PLC0415 - optional, heavy
    except ImportError:
        return
    configure_logging(fmt=args.log_format or "auto", level=args.log_level or "warning")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code (``listener.errors.EXIT_*``)."""
    try:
        args = parse(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        if exc.code in (None, 0):
            return EXIT_OK
        return EXIT_USAGE  # argparse exits 2 on a usage error; sysexits says 64
    func: Command | None = getattr(args, "func", None)
    if func is None:
        echo(build_parser().format_help(), err=True, end="")
        return EXIT_USAGE
    _configure_logging(args)
    try:
        return func(args)
    except ConfigError as exc:
        echo(str(exc), err=True)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except ListenerError as exc:
        echo(f"error: {exc}", err=True)
        return EXIT_UNEXPECTED
