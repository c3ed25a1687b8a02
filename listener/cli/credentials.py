"""``ews-listener credentials validate``: a fresh token per resource, what it grants, or why not."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from listener.cli._common import Commands, echo, load_config, usage
from listener.errors import EXIT_CONFIG, EXIT_OK, EXIT_UNEXPECTED, SecretError, TokenError

if TYPE_CHECKING:
    from listener.abc import AccessToken
    from listener.config import CredentialConfig

__all__ = ["cmd_credentials_validate", "register"]


def cmd_credentials_validate(args: argparse.Namespace) -> int:
    """Request a fresh token (never cached) per resource and show what each grants, or why it
    failed. A credential naming no Graph resource makes one request with all its scopes."""
    from listener.auth.resources import token_requests  # noqa: PLC0415 - keeps --help fast

    settings = load_config(args)
    name = args.name
    if name not in settings.credentials:
        known = ", ".join(sorted(settings.credentials)) or "none"
        echo(f"error: no credential named {name!r} (defined: {known})", err=True)
        return EXIT_CONFIG
    credential = settings.credentials[name]
    ok = True
    for request in token_requests(credential.scopes):
        ok = _validate_one(name, credential, request.resource, request.scopes, args) and ok
    if not ok:
        return EXIT_UNEXPECTED
    if args.mailbox:
        from listener.cli.mailbox import check_mailbox  # noqa: PLC0415 - imports the sources

        return check_mailbox(settings, args.mailbox, credential=name)
    return EXIT_OK


def _validate_one(
    name: str,
    credential: CredentialConfig,
    resource: str | None,
    scopes: tuple[str, ...],
    args: argparse.Namespace,
) -> bool:
    """One fresh token for ``scopes``: its expiry and claims, or the server's error and a hint."""
    from listener.auth import (  # noqa: PLC0415 - imports msal: only for this command
        RetryPolicy,
        build_provider,
        hint_for,
    )

    provider = build_provider(
        name, credential, scopes=scopes, retry=RetryPolicy(attempts=args.attempts)
    )
    what = f" for {resource}" if resource is not None else ""
    echo(
        f"credential {name!r}: requesting a token{what} from {credential.token_endpoint} "
        f"({credential.resolved_provider}, "
        f"{'certificate' if credential.certificate else credential.auth_method}; scopes "
        f"{' '.join(scopes)})"
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
        return False
    except SecretError as exc:
        echo(f"FAILED: the secret could not be read: {exc}")
        return False
    finally:
        provider.close()
    _show(token)
    return True


def _show(token: AccessToken) -> None:
    """Expiry, the claims that say what the token grants, and the role a mailbox needs."""
    from listener.auth import decode_claims  # noqa: PLC0415
    from listener.auth.resources import exchange_resource, is_graph  # noqa: PLC0415

    remaining = token.expires_at - datetime.now(UTC)
    echo(
        f"OK: {token.token_type} token valid until {token.expires_at:%Y-%m-%d %H:%M:%S} UTC "
        f"(in {int(remaining.total_seconds() // 60)} min)"
    )
    claims = decode_claims(token.token)
    if claims is None:
        echo("  the token is opaque (not a JWT): roles and scopes cannot be shown")
        return
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
    if exchange_resource(audience) and "full_access_as_app" not in roles:
        echo(
            "  warning: no 'full_access_as_app' role: add the Office 365 Exchange Online "
            "application permission full_access_as_app to the app and grant admin consent"
        )
    if is_graph(audience) and "Mail.ReadWrite" not in roles:
        echo(
            "  warning: no 'Mail.ReadWrite' role: add the Microsoft Graph application "
            "permission Mail.ReadWrite to the app and grant admin consent (Graph mailboxes read, "
            "mark, move and delete mail with it)"
        )


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``credentials validate``."""
    credentials = commands.add_parser(
        "credentials", parents=[common], help="work with the configured OAuth 2.0 credentials"
    )
    actions = credentials.add_subparsers(dest="credentials_command", metavar="ACTION")
    validate = actions.add_parser(
        "validate",
        parents=[common],
        help="request a fresh token per resource and show its expiry, roles and scopes",
        description="Request a fresh token (the cache is not used) for each resource the "
        "credential's scopes name (Exchange Online, Microsoft Graph: one request each, as the "
        "mailboxes ask) and print its expiry and the roles/scopes it grants, or the server's "
        "error with a hint. Exit 0 when every token was granted, else 1.",
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
        help="also open this configured mailbox with its token (mailbox, folder, count)",
    )
    validate.set_defaults(func=cmd_credentials_validate)
    credentials.set_defaults(func=lambda _args: usage(credentials))
