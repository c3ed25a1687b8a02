"""The EWS operation registry: one function per SOAP operation, registered by name.

How to add an operation
-----------------------
1. Pick (or create) the module of its family under ``ops/`` and write::

       from ews_listener_emulators.ops import (
           OpContext, OpResult, Reply, operation, response, success
       )

       @operation("GetFoo")
       def get_foo(ctx: OpContext, request: etree._Element) -> OpResult:
           message = success("GetFooResponseMessage")
           ...                                  # append m:/t: children in schema order
           return Reply(response("GetFoo", [message]))

   ``request`` is the body child (``m:GetFoo``); ``ctx.mailbox`` is the impersonated mailbox
   (auth, impersonation and RBAC are already checked by the server, and the fault engine has been
   consulted). Per-item failures go in the response as ``soap.error_message(...)`` elements. When
   Exchange answers the whole request with an ``s:Fault`` (HTTP 500), ``raise OpFault(code, text)``.
2. Import the module in ``load()`` below so the decorator runs.
3. A streaming operation (GetStreamingEvents) returns ``Stream(chunks)``: the server sends the
   headers with ``Transfer-Encoding: chunked`` and writes each chunk (a body child, which it wraps
   in a complete envelope, see ``soap.streaming_envelope``, validates when response validation is
   on, and sends) as it is produced, flushing after each; the iterator may block (e.g. on
   ``ctx.store.wait_events``) and should stop when ``ctx.closing`` is set. ``ctx.http`` is the raw
   ``BaseHTTPRequestHandler`` for anything more unusual.

``needs_mailbox=False`` registers an operation that may run without an impersonated mailbox
(none today: exchangelib impersonates on every call, ConvertId included).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from lxml import etree

from ews_listener_emulators.soap import MNS, TNS, Envelope, m, sub
from ews_listener_emulators.store import Mailbox, MailStore

if TYPE_CHECKING:
    from ews_listener_emulators.server import EwsEmulator

__all__ = [
    "OpContext",
    "OpFault",
    "OpResult",
    "Operation",
    "OperationSpec",
    "Reply",
    "Stream",
    "load",
    "lookup",
    "operation",
    "registered",
    "response",
    "success",
]


@dataclass
class OpContext:
    """What an operation handler can see about the request it serves."""

    emulator: EwsEmulator
    store: MailStore
    mailbox: Mailbox | None
    envelope: Envelope
    http: BaseHTTPRequestHandler
    client_id: str | None = None
    api_version: str = "Exchange2016"
    closing: threading.Event = field(default_factory=threading.Event)
    # Operations may note things for the request log (e.g. "items": 12).
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A complete response: ``body`` is the ``m:…Response`` element (or an ``s:Fault``)."""

    body: etree._Element
    status: int = 200
    # Extra HTTP headers (Subscribe's affinity cookie, ops/notifications.py).
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Stream:
    """A chunked response; each body child is sent (and flushed) as soon as the iterator yields."""

    chunks: Iterator[etree._Element]
    status: int = 200


OpResult = Reply | Stream
Operation = Callable[[OpContext, etree._Element], OpResult]


class OpFault(Exception):
    """Abort the request with an HTTP 500 ``s:Fault`` carrying ``code`` (an EWS ResponseCode)."""

    def __init__(self, code: str, message: str, values: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.values = values or {}


@dataclass(frozen=True)
class OperationSpec:
    """A registered operation."""

    name: str
    handler: Operation
    needs_mailbox: bool = True


_REGISTRY: dict[str, OperationSpec] = {}
_MODULES = ("folders", "items", "sync", "update", "attachments", "misc", "notifications")
_loaded = threading.Lock()
_done = False


def operation(name: str, *, needs_mailbox: bool = True) -> Callable[[Operation], Operation]:
    """Register ``handler`` as the implementation of the EWS operation ``name``."""

    def register(handler: Operation) -> Operation:
        _REGISTRY[name] = OperationSpec(name=name, handler=handler, needs_mailbox=needs_mailbox)
        return handler

    return register


def load() -> None:
    """Import every operation module once (a module not written yet is skipped)."""
    global _done  # noqa: PLW0603 - a process-wide, idempotent import step
    with _loaded:
        if _done:
            return
        for module in _MODULES:
            try:
                importlib.import_module(f"{__name__}.{module}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{__name__}.{module}":
                    raise
        _done = True


def lookup(name: str) -> OperationSpec | None:
    """The operation registered as ``name``."""
    load()
    return _REGISTRY.get(name)


def registered() -> list[str]:
    """Names of all registered operations."""
    load()
    return sorted(_REGISTRY)


def success(tag: str) -> etree._Element:
    """A ``m:<tag>`` response message with ``ResponseClass="Success"`` and ``NoError``."""
    message = etree.Element(m(tag), attrib={"ResponseClass": "Success"})
    sub(message, m("ResponseCode"), "NoError")
    return message


def response(operation_name: str, messages: Iterable[etree._Element]) -> etree._Element:
    """``m:<operation>Response/m:ResponseMessages`` holding ``messages``."""
    root = etree.Element(m(f"{operation_name}Response"), nsmap={"m": MNS, "t": TNS})
    container = sub(root, m("ResponseMessages"))
    for message in messages:
        container.append(message)
    return root
