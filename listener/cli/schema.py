"""``ews-listener schema message``: the JSON Schema of the event handlers receive."""

from __future__ import annotations

import argparse
import json

from listener.cli._common import Commands, echo
from listener.errors import EXIT_OK

__all__ = ["cmd_schema", "register"]


def cmd_schema(args: argparse.Namespace) -> int:
    from listener.model import message_json_schema  # noqa: PLC0415

    echo(json.dumps(message_json_schema(), indent=2))
    return EXIT_OK


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schema``."""
    schema = commands.add_parser("schema", parents=[common], help="print JSON Schemas")
    schema.add_argument("what", choices=["message"], help="message: the event handlers receive")
    schema.set_defaults(func=cmd_schema)
