"""What every command module shares: output, usage, configuration loading, global options.

This module imports none of the command modules; they import it (``_main`` → commands →
``_common``), so the direction of imports is one way.

Every character the CLI prints goes through :func:`echo`: mask secrets there, once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from listener.config import ENV_CONFIG, ENV_PREFIX, ConfigError, ConfigIssue, Settings
from listener.errors import EXIT_CONFIG, EXIT_UNAVAILABLE, EXIT_USAGE
from listener.observability.redaction import redact

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

    Commands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    Commands = Any

__all__ = [
    "Command",
    "Commands",
    "Parser",
    "config_path",
    "configured_settings",
    "echo",
    "global_options",
    "load_config",
    "startup_errors",
    "usage",
]

Command = Callable[[argparse.Namespace], int]
"""A command: the parsed arguments in, the process exit code (``listener.errors.EXIT_*``) out."""


def echo(text: str = "", *, err: bool = False, end: str = "\n") -> None:
    """Print ``text`` to stdout (``err=True``: stderr). The one way the CLI prints.

    Looked up at call time, so pytest's ``capsys`` and redirected streams see it. Masked here,
    for every command: registered secrets, tokens, URL user-info and query values (issue 11).
    """
    stream = sys.stderr if err else sys.stdout
    stream.write(redact(text) + end)
    stream.flush()


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose help, usage and errors also go through :func:`echo`."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if message:
            echo(message, err=file is not sys.stdout, end="")


def usage(parser: argparse.ArgumentParser) -> int:
    """A command group called without its action: its help on stderr, exit 64."""
    echo(parser.format_help(), err=True, end="")
    return EXIT_USAGE


def config_path(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Path | None:
    """``--config``, else ``$EWS_LISTENER_CONFIG``; None when only the environment configures."""
    env = os.environ if env is None else env
    value = getattr(args, "config", None) or env.get(ENV_CONFIG)
    if value:
        return Path(value)
    if any(name.upper().startswith(ENV_PREFIX) for name in env):
        return None
    raise ConfigError(
        [
            ConfigIssue(
                None,
                "",
                None,
                f"no configuration: pass --config PATH or set {ENV_CONFIG} "
                "(see config/example.toml)",
            )
        ]
    )


def load_config(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> Settings:
    """The settings the command line points at; raises ``ConfigError`` (``main`` → exit 78)."""
    from listener.config import load_settings  # noqa: PLC0415 - keeps --help and --version fast

    return load_settings(config_path(args, env), env=os.environ if env is None else env)


def configured_settings(args: argparse.Namespace) -> Settings:
    """:func:`load_config`, then apply its logging section (command-line flags win)."""
    from listener.observability import configure_logging  # noqa: PLC0415 - heavy

    settings = load_config(args)
    configure_logging(
        fmt=args.log_format or settings.service.log_format,
        level=args.log_level or settings.service.log_level,
    )
    return settings


def startup_errors(command: Command) -> Command:
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
            echo(f"configuration error: {e}", err=True)
            return EXIT_CONFIG
        except StoreError as e:
            echo(f"state store unavailable: {e}", err=True)
            return EXIT_UNAVAILABLE

    return wrapped


def global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The options every command accepts; sub-parsers use SUPPRESS so they do not reset them."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--config",
        metavar="PATH",
        default=default(None),
        help=f"configuration file (TOML); default ${ENV_CONFIG}",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error", "critical"],
        type=str.lower,
        default=default(None),
        help="log level (default: service.log_level, else info)",
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        default=default(None),
        help="log lines as JSON, for a console, or auto (console on a TTY)",
    )
