"""``ews-listener mailbox test``: token, mailbox, folder and item count of one mailbox, as its
source (EWS or Microsoft Graph) probes them."""

from __future__ import annotations

import argparse
from typing import Any

from listener.cli._common import Commands, configured_settings, echo, startup_errors, usage
from listener.errors import EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE

__all__ = ["check_mailbox", "cmd_mailbox_test", "register"]


@startup_errors
def cmd_mailbox_test(args: argparse.Namespace) -> int:
    return check_mailbox(configured_settings(args), args.address)


def check_mailbox(settings: Any, wanted: str, *, credential: str | None = None) -> int:
    """Token, impersonation, folder and item count of the mailbox called or addressed ``wanted``.

    Also ``credentials validate NAME --mailbox ADDRESS`` (then only mailboxes of ``credential``).
    """
    from listener.app import App  # noqa: PLC0415 - imports the mail sources

    wanted = wanted.lower()
    names = [
        n
        for n, m in settings.mailboxes.items()
        if (n.lower() == wanted or m.address.lower() == wanted)
        and (credential is None or m.credential == credential)
    ]
    if not names:
        which = f" using credential {credential!r}" if credential else ""
        echo(f"error: no mailbox {wanted!r}{which} in the configuration", err=True)
        return EXIT_USAGE
    app = App(settings, store=_NullStore(), handlers={})  # type: ignore[arg-type]
    ok = True
    try:
        for name in names:
            mailbox = settings.mailboxes[name]
            echo(f"{name} ({mailbox.address}, credential {mailbox.credential}):")
            ok = _mailbox_steps(app, name, mailbox) and ok
    finally:
        app.close()
    return EXIT_OK if ok else EXIT_UNEXPECTED


def _mailbox_steps(app: Any, name: str, mailbox: Any) -> bool:
    """Each step of the source's probe on one line; it stops at the first that fails."""
    ok = True
    for step in app.source(name).probe():
        echo(f"  {step.name:<7} {'ok  ' if step.ok else 'FAIL'} {step.detail}")
        ok = ok and step.ok
    return ok


class _NullStore:
    """``mailbox test`` touches no state."""

    def close(self) -> None:
        return


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``mailbox test``."""
    mailbox = commands.add_parser("mailbox", parents=[common], help="check configured mailboxes")
    actions = mailbox.add_subparsers(dest="mailbox_command", metavar="ACTION")
    test = actions.add_parser(
        "test",
        parents=[common],
        help="token, impersonation, folder and item count of one mailbox",
        description="Get a token, open the mailbox with impersonation, resolve its folder and "
        "count its items. Exit 0 when every step works, 1 otherwise.",
    )
    test.add_argument("address", help="the mailbox's address or configured name")
    test.set_defaults(func=cmd_mailbox_test)
    mailbox.set_defaults(func=lambda _args: usage(mailbox))
