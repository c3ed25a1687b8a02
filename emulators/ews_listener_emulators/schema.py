"""Validation of request and response elements against Microsoft's ``ews.xsd``.

Compiling the schema takes ~0.15 s, so each schema folder is compiled once per process and shared
by every emulator (``functools.lru_cache``). ``types.xsd`` cannot be compiled alone (it refers to
``xml:lang`` without a schema location); ``ews.xsd`` imports a stand-in ``xml.xsd`` first.
lxml's ``XMLSchema`` objects are not documented as thread-safe, so validation holds a lock; it is
a few tens of microseconds per small element.
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import threading
from pathlib import Path
from typing import Any

from lxml import etree

__all__ = ["SCHEMA_DIR_ENV", "SchemaValidator", "resolve_schema_dir"]

SCHEMA_DIR_ENV = "EWS_SCHEMA_DIR"

log = logging.getLogger(__name__)
_warned_off = threading.Event()


def resolve_schema_dir(explicit: str | Path | None) -> Path | None:
    """The schema folder from the argument, else ``$EWS_SCHEMA_DIR``; None (logged once) if off."""
    candidate = explicit if explicit is not None else os.environ.get(SCHEMA_DIR_ENV) or None
    if candidate is not None:
        path = Path(candidate)
        if (path / "ews.xsd").is_file():
            return path
        log.warning("EWS schema folder %s has no ews.xsd; schema validation is off", path)
    elif not _warned_off.is_set():
        _warned_off.set()
        log.info("%s is not set; EWS schema validation is off", SCHEMA_DIR_ENV)
    return None


_MNS = "http://schemas.microsoft.com/exchange/services/2006/messages"
_TNS = "http://schemas.microsoft.com/exchange/services/2006/types"

#: (path, the tag the schema wants there) for what Exchange sends against its own schema.
#: Streamed notifications: ``types.xsd`` types ``m:Notifications`` as
#: ``NonEmptyArrayOfNotificationsType``, whose child is ``t:Notification``, but Exchange writes
#: ``m:Notification`` (the MS docs capture in ews-samples, and the EWS Managed API reads only that
#: name), so the emulator writes ``m:Notification`` too.
_KNOWN_DEPARTURES = (
    (f".//{{{_MNS}}}Notifications/{{{_MNS}}}Notification", f"{{{_TNS}}}Notification"),
)


@functools.lru_cache(maxsize=4)
def _compile(directory: str) -> etree.XMLSchema:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(Path(directory) / "ews.xsd"), parser=parser))


class SchemaValidator:
    """Validates single EWS elements (a header child or a body child) against ``ews.xsd``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()
        self._schema = _compile(str(self.directory))
        self._lock = threading.Lock()

    def validate(self, element: etree._Element) -> str | None:
        """None when valid, else the first violation as ``line:column: message``.

        Exchange's known departures from its own schema (``_KNOWN_DEPARTURES``) are undone in
        the copy that is validated, so everything else is still checked.
        """
        # A detached deep copy: validating a subtree in place would see the envelope as the root.
        copied = copy.deepcopy(element)
        for path, tag in _KNOWN_DEPARTURES:
            for found in copied.iterfind(path):
                found.tag = tag
        document = etree.ElementTree(copied)
        with self._lock:
            if self._schema.validate(document):
                return None
            # lxml-stubs declare _ErrorLog empty; it is a sequence of _LogEntry at runtime.
            errors: list[Any] = list(self._schema.error_log)  # type: ignore[call-overload]
            error = errors[0] if errors else None
        return f"{error.line}:{error.column}: {error.message}" if error else "invalid"
