"""The ``ews-listener`` command: one function per command, exit codes from ``listener.errors``.

Adding a command: write ``cmd_NAME(args) -> int`` and register it in ``build_parser`` with
``parser.set_defaults(func=cmd_NAME)``. Global options (``--config``, ``--log-level``,
``--log-format``) are accepted before or after the command. A ``ConfigError`` anywhere becomes
exit 78 with every issue listed (systemd: ``RestartPreventExitStatus=78``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from listener import __version__
from listener.config import ENV_CONFIG, ENV_PREFIX, ConfigError, ConfigIssue, Settings
from listener.errors import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    ListenerError,
    SecretError,
    TokenError,
)

__all__ = [
    "build_parser",
    "cmd_check_config",
    "cmd_credentials_validate",
    "config_path",
    "load_config",
    "main",
]

Command = Callable[[argparse.Namespace], int]


# --- shared helpers ----------------------------------------------------------------------------


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


def _out(args: argparse.Namespace) -> TextIO:
    return getattr(args, "stdout", None) or sys.stdout


def _err(args: argparse.Namespace) -> TextIO:
    return getattr(args, "stderr", None) or sys.stderr


def _mask_url(url: str) -> str:
    """A database URL without its password."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


# --- check-config ------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    """Load and validate; print a masked summary (exit 0) or every problem (exit 78)."""
    settings = load_config(args)
    out = _out(args)
    path = config_path(args)
    print(
        f"Configuration OK: {path or 'environment only'} ({len(settings.credentials)} "
        f"credentials, {len(settings.mailboxes)} mailboxes, {len(settings.handlers)} handlers)",
        file=out,
    )
    print("credentials:", file=out)
    for name, credential in sorted(settings.credentials.items()):
        if credential.secret is not None:
            how = f"secret {credential.secret.describe()}, auth_method {credential.auth_method}"
            if credential.auth_method == "basic" and credential.basic_encoding == "raw":
                how += " (raw)"
        else:
            assert credential.certificate is not None
            how = f"certificate {credential.certificate.certificate}"
        print(
            f"  {name}: client_id {credential.client_id}, {how}, via "
            f"{credential.resolved_provider} at {credential.token_endpoint}, scopes "
            f"{' '.join(credential.scopes)}",
            file=out,
        )
    print("mailboxes:", file=out)
    for name, mailbox in sorted(settings.mailboxes.items()):
        when = f"cron '{mailbox.cron}'" if mailbox.cron else f"every {mailbox.interval:g} s"
        handlers = sorted({h for route in mailbox.routes for h in route.handlers})
        state = "" if mailbox.enabled else " [disabled]"
        print(
            f"  {name}: {mailbox.address} folder '{mailbox.folder}' with credential "
            f"{mailbox.credential}, {when}, start_from {mailbox.start_from}, after_success "
            f"{mailbox.after_success}, handlers {', '.join(handlers)}{state}",
            file=out,
        )
    print("handlers:", file=out)
    for name, handler in sorted(settings.handlers.items()):
        print(f"  {name}: {getattr(handler, 'type', type(handler).__name__)}", file=out)
    print(f"state: {_mask_url(settings.state.url)}", file=out)
    return EXIT_OK


# --- credentials validate ----------------------------------------------------------------------


def cmd_credentials_validate(args: argparse.Namespace) -> int:
    """Request a fresh token (never cached) and show what it grants, or why it failed."""
    from listener.auth import (  # noqa: PLC0415 - imports msal: only for this command
        RetryPolicy,
        build_provider,
        decode_claims,
        hint_for,
    )

    settings = load_config(args)
    out, name = _out(args), args.name
    if name not in settings.credentials:
        known = ", ".join(sorted(settings.credentials)) or "none"
        print(f"error: no credential named {name!r} (defined: {known})", file=_err(args))
        return EXIT_CONFIG
    credential = settings.credentials[name]
    provider = build_provider(name, credential, retry=RetryPolicy(attempts=args.attempts))
    print(
        f"credential {name!r}: requesting a token from {credential.token_endpoint} "
        f"({credential.resolved_provider}, "
        f"{'certificate' if credential.certificate else credential.auth_method})",
        file=out,
    )
    try:
        token = provider.fetch_uncached()
    except TokenError as exc:
        print(f"FAILED: {exc}", file=out)
        if exc.error:
            print(f"  error: {exc.error}", file=out)
        if exc.aadsts:
            print(f"  AADSTS code: {exc.aadsts}", file=out)
        hint = hint_for(exc.aadsts, exc.error)
        if hint:
            print(f"  hint: {hint}", file=out)
        return EXIT_UNEXPECTED
    except SecretError as exc:
        print(f"FAILED: the secret could not be read: {exc}", file=out)
        return EXIT_UNEXPECTED
    finally:
        provider.close()
    remaining = token.expires_at - datetime.now(UTC)
    print(
        f"OK: {token.token_type} token valid until {token.expires_at:%Y-%m-%d %H:%M:%S} UTC "
        f"(in {int(remaining.total_seconds() // 60)} min)",
        file=out,
    )
    claims = decode_claims(token.token)
    if claims is None:
        print("  the token is opaque (not a JWT): roles and scopes cannot be shown", file=out)
        return EXIT_OK
    roles = claims.get("roles") or []
    for key, label in (
        ("roles", "roles"),
        ("scp", "scopes"),
        ("aud", "audience"),
        ("tid", "tenant"),
        ("appid", "app id"),
        ("app_displayname", "app"),
    ):
        value = claims.get(key)
        if value:
            shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
            print(f"  {label}: {shown}", file=out)
    audience = str(claims.get("aud") or "")
    if "outlook.office365.com" in audience and "full_access_as_app" not in roles:
        print(
            "  warning: no 'full_access_as_app' role: add the Office 365 Exchange Online "
            "application permission full_access_as_app to the app and grant admin consent",
            file=out,
        )
    if args.mailbox:
        from listener.cli_service import check_mailbox  # noqa: PLC0415 - imports exchangelib

        return check_mailbox(settings, args.mailbox, out, credential=name)
    return EXIT_OK


# --- parser and main ---------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; commands register ``func`` with ``set_defaults``."""
    parser = argparse.ArgumentParser(
        prog="ews-listener",
        description="Watch Exchange mailboxes over EWS and hand new messages to handlers.",
    )
    parser.add_argument("--version", action="version", version=f"ews-listener {__version__}")
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    check = commands.add_parser(
        "check-config",
        parents=[common],
        help="validate the configuration and print a masked summary (exit 78 when invalid)",
        description="Load and validate the configuration; list every problem and exit 78, or "
        "print a summary with secrets masked. Reads no secret and contacts no server.",
    )
    check.set_defaults(func=cmd_check_config)

    credentials = commands.add_parser(
        "credentials", parents=[common], help="work with the configured OAuth 2.0 credentials"
    )
    credential_commands = credentials.add_subparsers(dest="credentials_command", metavar="ACTION")
    validate = credential_commands.add_parser(
        "validate",
        parents=[common],
        help="request a fresh token and show its expiry, roles and scopes",
        description="Request a fresh token (the cache is not used) and print its expiry and the "
        "roles/scopes it grants, or the server's error with a hint. Exit 0 or 1.",
    )
    validate.add_argument("name", help="the credential's name ([credentials.NAME])")
    validate.add_argument(
        "--attempts",
        type=int,
        default=3,
        metavar="N",
        help="tries on 5xx and network errors, with back-off (default 3)",
    )
    validate.add_argument(
        "--mailbox",
        metavar="ADDRESS",
        help="also open this configured mailbox with the token (impersonation, folder, count)",
    )
    validate.set_defaults(func=cmd_credentials_validate)
    credentials.set_defaults(func=lambda args: _usage(credentials, args))

    from listener.cli_service import register  # noqa: PLC0415 - run, once, dead-letters, ...

    register(commands, common)
    return parser


def _usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    parser.print_help(_err(args))
    return EXIT_USAGE


def _configure_logging(args: argparse.Namespace) -> None:
    try:
        from listener.observability import configure_logging  # noqa: PLC0415 - optional, heavy
    except ImportError:
        return
    configure_logging(fmt=args.log_format or "auto", level=args.log_level or "warning")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code (``listener.errors.EXIT_*``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        code = exc.code
        if code in (None, 0):
            return EXIT_OK
        return EXIT_USAGE  # argparse exits 2 on a usage error; sysexits says 64
    func: Command | None = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _configure_logging(args)
    try:
        return func(args)
    except ConfigError as exc:
        print(exc, file=_err(args))
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except ListenerError as exc:
        print(f"error: {exc}", file=_err(args))
        return EXIT_UNEXPECTED
