"""What the broker handlers (``amqp``, ``nats``, ``redis_stream``) share.

* **The event**: the body is the webhook's, byte for byte (``Message.to_json()``), with the
  webhook's ``Content-Type``; the same names carry the idempotency key and the mailbox wherever a
  broker has headers (AMQP headers, NATS headers) or fields (Redis stream entries):
  :func:`event_headers`.
* **Destination templates**: an exchange, routing key, subject or stream key may name message
  fields, ``"mail.{mailbox}.{sender_domain}"``. The vocabulary is :data:`FIELDS`, checked when the
  configuration loads. Each field becomes exactly *one token*: lower case, every character other
  than ``a-z 0-9 - _ @`` replaced by ``_`` (so ``example.net`` → ``example_net``; a dot in a value
  would otherwise add a word to an AMQP topic key or a token to a NATS subject, and ``*`` or
  ``>`` would be wildcards), an empty value ``_``. The literal text is the operator's and kept.
* **Optional libraries**: :func:`require` turns a missing broker client into a configuration
  error that names the extra to install.
"""

from __future__ import annotations

import importlib
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType

from listener.handlers.errors import HandlerConfigError
from listener.model import Message

__all__ = [
    "CONTENT_TYPE",
    "FIELDS",
    "IDEMPOTENCY_HEADER",
    "MAILBOX_HEADER",
    "Template",
    "event_body",
    "event_headers",
    "require",
    "token",
]

CONTENT_TYPE = "application/json; charset=utf-8"  # the webhook's Content-Type
IDEMPOTENCY_HEADER = "Idempotency-Key"  # the webhook's header
MAILBOX_HEADER = "X-Ews-Listener-Mailbox"


def _local(address: str) -> str:
    return address.rpartition("@")[0] if "@" in address else address


def _domain(address: str) -> str:
    return address.rpartition("@")[2] if "@" in address else ""


def _sender(message: Message) -> str:
    sender = message.from_ or message.sender
    return sender.email if sender and sender.email else ""


FIELDS: Mapping[str, Callable[[Message], str]] = {
    "mailbox": lambda m: m.mailbox,
    "mailbox_local": lambda m: _local(m.mailbox),
    "mailbox_domain": lambda m: _domain(m.mailbox),
    "sender": _sender,
    "sender_local": lambda m: _local(_sender(m)),
    "sender_domain": lambda m: _domain(_sender(m)),
    "folder": lambda m: m.folder,
    "source": lambda m: m.source,
    "importance": lambda m: m.importance,
}
"""The fields a destination template may name; the sender is ``from``, else ``sender``."""

_UNSAFE = re.compile(r"[^a-z0-9@_-]")


def token(value: str) -> str:
    """``value`` as one safe token of a destination (see the module docstring)."""
    return _UNSAFE.sub("_", value.lower()) or "_"


@dataclass(frozen=True)
class Template:
    """A destination with ``{field}`` placeholders; :meth:`parse` refuses anything else."""

    text: str
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """The template ``text``; ValueError naming the bad placeholder and the vocabulary."""
        names: list[str] = []
        try:
            parts = list(string.Formatter().parse(text))
        except ValueError as e:  # a lone "{" or "}"
            raise ValueError(
                f"{text!r} is not a valid template ({e}; write '{{{{' for '{{')"
            ) from None
        for _literal, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in FIELDS or spec or conversion:
                shown = "{" + name + (f"!{conversion}" if conversion else "")
                shown += (f":{spec}" if spec else "") + "}"
                raise ValueError(
                    f"{text!r}: unknown placeholder {shown}; a template may use "
                    + ", ".join("{" + f + "}" for f in FIELDS)
                )
            names.append(name)
        return cls(text, tuple(names))

    @property
    def literal(self) -> str:
        """The text with every placeholder replaced by a sample token (for static checks)."""
        return self.text.format_map(dict.fromkeys(self.fields, "x"))

    def render(self, message: Message) -> str:
        """The destination of ``message``."""
        if not self.fields:
            return self.text.format_map({})
        return self.text.format_map({f: token(FIELDS[f](message)) for f in self.fields})


def event_body(message: Message) -> bytes:
    """The event bytes, exactly as the webhook POSTs them (without inline attachments)."""
    return message.to_json().encode("utf-8")


def event_headers(message: Message) -> dict[str, str]:
    """The headers every broker message carries: content type, idempotency key, mailbox."""
    return {
        "Content-Type": CONTENT_TYPE,
        IDEMPOTENCY_HEADER: message.idempotency_key,
        MAILBOX_HEADER: message.mailbox,
    }


def require(module: str, *, handler: str, kind: str, extra: str) -> ModuleType:
    """Import ``module`` or fail as a configuration error naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise HandlerConfigError(
            f"handlers.{handler}: type = {kind!r} needs the {e.name or module!r} package; "
            f"install it with: pip install 'ews-listener[{extra}]'"
        ) from None
