"""Routing rules: which handlers a message goes to.

A mailbox's ``routes`` are tried in order. A route matches when every condition it gives matches
(a route without conditions matches everything: the default route); a condition given as a list
matches when any of its items does. The first matching route wins, unless it says
``continue = true``, in which case the next matching routes add their handlers too. In TOML::

    [[mailboxes.orders.routes]]
    from = ["*@supplier.example", "partner.example"]
    subject = '(?i)^order\\s+\\d+'
    handlers = ["erp"]

    [[mailboxes.orders.routes]]
    header = { name = "X-Priority", equals = "1" }
    handlers = ["pager"]
    continue = true

    [[mailboxes.orders.routes]]   # default: everything else
    handlers = ["archive"]

Address patterns are shell globs, case-insensitive: with an ``@`` they match the whole address
(``*@example.com``, ``billing@*``), without one they match the domain (``example.com``,
``*.example.com``). ``subject`` and header ``regex`` are Python regular expressions searched
anywhere in the text (anchor with ``^``/``$``; ``(?i)`` for case-insensitive).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from listener.model import Address, Importance, Message

__all__ = ["HeaderCondition", "Route", "Router"]


def _as_tuple(value: Any) -> Any:
    """A single value (TOML ``key = "x"``) becomes a one-item tuple: string-or-list."""
    if value is None or isinstance(value, list | tuple):
        return value
    return (value,)


def _compile_regex(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"{where}: invalid regular expression {pattern!r}: {e}") from None


def _compile_glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern.strip()), re.IGNORECASE)


Patterns = Annotated[tuple[str, ...] | None, BeforeValidator(_as_tuple)]


class HeaderCondition(BaseModel):
    """An internet header (name case-insensitive) whose value ``equals`` a text or matches a
    ``regex``; any header of that name may match."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    equals: str | None = None
    regex: str | None = None

    _compiled: re.Pattern[str] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _exactly_one(self) -> HeaderCondition:
        if (self.equals is None) == (self.regex is None):
            raise ValueError(f"header {self.name!r}: give exactly one of 'equals' or 'regex'")
        if self.regex is not None:
            self._compiled = _compile_regex(self.regex, f"header {self.name!r}")
        return self

    def matches(self, message: Message) -> bool:
        """Whether any header called ``name`` satisfies the condition."""
        for value in message.header_values(self.name):
            if self._compiled is not None:
                if self._compiled.search(value):
                    return True
            elif value.strip() == (self.equals or "").strip():
                return True
        return False


class Route(BaseModel):
    """One rule: when every condition given matches, hand the message to ``handlers``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str | None = Field(default=None, description="A label for logs.")
    from_: Patterns = Field(default=None, alias="from", description="Sender address or domain.")
    to: Patterns = Field(default=None, description="Any To address or domain.")
    cc: Patterns = Field(default=None, description="Any Cc address or domain.")
    recipient: Patterns = Field(default=None, description="Any To or Cc address or domain.")
    subject: Patterns = Field(default=None, description="Regular expression, searched.")
    header: Annotated[tuple[HeaderCondition, ...] | None, BeforeValidator(_as_tuple)] = None
    has_attachments: bool | None = Field(
        default=None, description="Whether the message has attachments (inline ones aside)."
    )
    attachment_name: Patterns = Field(default=None, description="Glob on any attachment name.")
    importance: Annotated[tuple[Importance, ...] | None, BeforeValidator(_as_tuple)] = None
    handlers: tuple[str, ...] = Field(min_length=1, description="Handler names, in order.")
    continue_: bool = Field(
        default=False, alias="continue", description="Also try the following routes."
    )
    ordered: bool = Field(
        default=False,
        description="Hand matching messages over one at a time, in the order received.",
    )

    _from: tuple[tuple[re.Pattern[str], bool], ...] = PrivateAttr(default=())
    _to: tuple[tuple[re.Pattern[str], bool], ...] = PrivateAttr(default=())
    _cc: tuple[tuple[re.Pattern[str], bool], ...] = PrivateAttr(default=())
    _recipient: tuple[tuple[re.Pattern[str], bool], ...] = PrivateAttr(default=())
    _subject: tuple[re.Pattern[str], ...] = PrivateAttr(default=())
    _attachment: tuple[re.Pattern[str], ...] = PrivateAttr(default=())

    @field_validator("from_", "to", "cc", "recipient", "subject", "attachment_name", "importance")
    @classmethod
    def _not_empty(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        # `to = []` would silently never match; make the author say what they mean.
        if value is not None and (not value or any(not v.strip() for v in value)):
            raise ValueError("must be a non-empty string or a non-empty list of them")
        return value

    @field_validator("handlers")
    @classmethod
    def _handler_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v.strip() for v in value):
            raise ValueError("handler names must not be empty")
        return value

    def model_post_init(self, context: Any, /) -> None:
        """Compile every pattern once, so a bad regex fails at load, naming the pattern."""
        self._from = tuple(_compile_address(p) for p in self.from_ or ())
        self._to = tuple(_compile_address(p) for p in self.to or ())
        self._cc = tuple(_compile_address(p) for p in self.cc or ())
        self._recipient = tuple(_compile_address(p) for p in self.recipient or ())
        self._attachment = tuple(_compile_glob(p) for p in self.attachment_name or ())
        self._subject = tuple(re.compile(p) for p in self.subject or ())

    @field_validator("subject")
    @classmethod
    def _valid_regexes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for pattern in value or ():
            _compile_regex(pattern, "subject")
        return value

    @property
    def is_default(self) -> bool:
        """True when the route has no condition and so matches every message."""
        return not any(
            getattr(self, f) is not None
            for f in (
                "from_",
                "to",
                "cc",
                "recipient",
                "subject",
                "header",
                "has_attachments",
                "attachment_name",
                "importance",
            )
        )

    def matches(self, message: Message) -> bool:
        """Whether every condition this route gives matches ``message`` (checked cheapest first,
        stopping at the first that fails)."""
        if self.importance is not None and message.importance not in self.importance:
            return False
        if self.has_attachments is not None and self.has_attachments != _has_attachments(message):
            return False
        sender = message.from_ or message.sender
        if self.from_ is not None and not _any_address(self._from, (sender,) if sender else ()):
            return False
        if self.to is not None and not _any_address(self._to, message.to):
            return False
        if self.cc is not None and not _any_address(self._cc, message.cc):
            return False
        if self.recipient is not None and not _any_address(
            self._recipient, (*message.to, *message.cc)
        ):
            return False
        if self.attachment_name is not None and not any(
            p.match(a.name) for p in self._attachment for a in message.attachments
        ):
            return False
        if self.subject is not None and not any(p.search(message.subject) for p in self._subject):
            return False
        return self.header is None or any(h.matches(message) for h in self.header)


def _has_attachments(message: Message) -> bool:
    # Exchange's HasAttachments ignores inline parts (signature logos); so does this condition.
    return message.has_attachments or any(not a.is_inline for a in message.attachments)


def _compile_address(pattern: str) -> tuple[re.Pattern[str], bool]:
    """A glob and whether it is for whole addresses (it has an ``@``) or for domains."""
    return _compile_glob(pattern), "@" in pattern


def _any_address(
    patterns: Sequence[tuple[re.Pattern[str], bool]], addresses: Iterable[Address]
) -> bool:
    for address in addresses:
        email = address.email.strip()
        domain = email.rpartition("@")[2]
        for pattern, whole in patterns:
            if pattern.match(email if whole else domain):
                return True
    return False


class Router:
    """Routes in order: ``handlers_for(message)`` is the de-duplicated handler names to run."""

    def __init__(self, routes: Iterable[Route | Mapping[str, Any]]) -> None:
        self.routes: tuple[Route, ...] = tuple(
            r if isinstance(r, Route) else Route.model_validate(r) for r in routes
        )

    def handler_names(self) -> set[str]:
        """Every handler any route names (to check them against the configured handlers)."""
        return {name for route in self.routes for name in route.handlers}

    def matching(self, message: Message) -> list[Route]:
        """The routes that apply: up to and including the first match without ``continue``."""
        out: list[Route] = []
        for route in self.routes:
            if route.matches(message):
                out.append(route)
                if not route.continue_:
                    break
        return out

    def handlers_for(self, message: Message) -> tuple[str, ...]:
        """Handler names for ``message`` in route order, each once; empty when nothing matches."""
        return tuple(dict.fromkeys(n for r in self.matching(message) for n in r.handlers))

    def is_ordered(self, message: Message) -> bool:
        """Whether a route that applies to ``message`` says ``ordered = true``."""
        return any(r.ordered for r in self.matching(message))

    def __call__(self, message: Message) -> tuple[str, ...]:
        """Same as :meth:`handlers_for`, so a ``Router`` is itself the poller's router callable."""
        return self.handlers_for(message)
