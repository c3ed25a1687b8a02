"""``ews-listener credentials validate``: a fresh token, what it grants, or why it failed."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from listener.cli._common import Commands, echo, load_config, usage
from listener.errors import EXIT_CONFIG, EXIT_OK, EXIT_UNEXPECTED, SecretError, TokenError

__all__ = ["cmd_credentials_validate", "register"]


def cmd_credentials_validate(args: argparse.Namespace) -> int:
    """Request a fresh token (never cached) and show what it grants, or why it failed."""
    from listener.auth import (  # noqa: PLC0415 - imports msal: only for this command
        RetryPolicy,
        build_provider,
        decode_claims,
        hint_for,
    )

    settings = load_config(args)
    name = args.name
    if name not in settings.credentials:
        known = ", ".join(sorted(settings.credentials)) or "none"
        echo(f"error: no credential named {name!r} (defined: {known})", err=True)
        return EXIT_CONFIG
    credential = settings.credentials[name]
    provider = build_provider(name, credential, retry=RetryPolicy(attempts=args.attempts))
    echo(
        f"credential {name!r}: requesting a token from {credential.token_endpoint} "
        f"({credential.resolved_provider}, "
        f"{'certificate' if credential.certificate else credential.auth_method})"
    )
    try:
        token = provider.fetch_uncached()
    except TokenError as exc:
        echo(f"FAILED: {exc}")
        if exc.error:
            echo(f"  error: {exc.error}")
        if exc.aadsts:
            echo(f"  AADSTS code: {exc.aadsts}")
        hint = hint_for(exc.aadsts, exc.error)
        if hint:
            echo(f"  hint: {hint}")
        return EXIT_UNEXPECTED
    except SecretError as exc:
        echo(f"FAILED: the secret could not be read: {exc}")
        return EXIT_UNEXPECTED
    finally:
        provider.close()
    remaining = token.expires_at - datetime.now(UTC)
    echo(
        f"OK: {token.token_type} token valid until {token.expires_at:%Y-%m-%d %H:%M:%S} UTC "
        f"(in {int(remaining.total_seconds() // 60)} min)"
    )
    claims = decode_claims(token.token)
    if claims is None:
        echo("  the token is opaque (not a JWT): roles and scopes cannot be shown")
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
            echo(f"  {label}: {shown}")
    audience = str(claims.get("aud") or "")
    if "outlook.office365.com" in audience and "full_access_as_app" not in roles:
        echo(
            "  warning: no 'full_access_as_app' role: add the Office 365 Exchange Online "
            "application permission full_access_as_app to the app and grant admin consent"
        )
    if args.mailbox:
        from listener.cli.mailbox import check_mailbox  # noqa: PLC0415 - imports exchangelib

        return check_mailbox(settings, args.mailbox, credential=name)
    return EXIT_OK


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``credentials validate``."""
    credentials = commands.add_parser(
        "credentials", parents=[common], help="work with the configured OAuth 2.0 credentials"
    )
    actions = credentials.add_subparsers(dest="credentials_command", metavar="ACTION")
    validate = actions.add_parser(
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
    credentials.set_defaults(func=lambda _args: usage(credentials))
