"""Validation of the Graph emulator's JSON answers against Microsoft's OpenAPI description.

The description is ``graph-mail-v1.0.openapi.json`` in the folder ``$GRAPH_SCHEMA_DIR`` names
(``../shared/graph-schema``: generated from msgraph-metadata, see its README). A body is checked
against the schema of the operation's response (path template + method, ``2XX`` or ``4XX``/``5XX``)
or against a JSON pointer the resource names (``GraphAnswer.schema``).

Two places where the generated description and what Graph sends disagree are relaxed, as the
folder's ``check_example.py`` does by default (its README, "Validating a body in Python"):
every object schema lists ``@odata.type`` in ``required``, but Graph leaves it out of most objects;
``ODataErrors.InnerError.date`` is typed ``Edm.DateTimeOffset``, but Graph writes it without an
offset (``"2019-09-20T21:47:50"``, the documented errors), and so does this emulator.

The document is loaded and relaxed once per folder and process (``functools.lru_cache``), and a
validator is built once per schema pointer; validators are read-only, so threads share them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS30ReadValidator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

__all__ = ["DOCUMENT", "SCHEMA_DIR_ENV", "GraphSchema", "resolve_graph_schema_dir"]

SCHEMA_DIR_ENV = "GRAPH_SCHEMA_DIR"
DOCUMENT = "graph-mail-v1.0.openapi.json"
_BASE = "urn:graph-mail-v1.0"

log = logging.getLogger(__name__)


def resolve_graph_schema_dir(explicit: str | Path | None) -> Path | None:
    """The folder from the argument, else ``$GRAPH_SCHEMA_DIR``; None when validation is off."""
    candidate = explicit if explicit is not None else os.environ.get(SCHEMA_DIR_ENV) or None
    if candidate is None:
        return None
    path = Path(candidate)
    if (path / DOCUMENT).is_file():
        return path
    log.warning("Graph schema folder %s has no %s; schema validation is off", path, DOCUMENT)
    return None


def _relax(document: dict[str, Any]) -> dict[str, Any]:
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            required = node.get("required")
            if isinstance(required, list) and "@odata.type" in required:
                required.remove("@odata.type")
                if not required:
                    del node["required"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    for name, schema in document["components"]["schemas"].items():
        if name.endswith("ODataErrors.InnerError"):
            schema["properties"]["date"] = {"type": "string", "nullable": True}
    return document


@functools.lru_cache(maxsize=4)
def _load(directory: str) -> tuple[dict[str, Any], Registry[Any]]:
    with open(Path(directory) / DOCUMENT, encoding="utf-8") as handle:
        document = _relax(json.load(handle))
    resource = Resource.from_contents(document, default_specification=DRAFT4)
    return document, Registry().with_resource(_BASE, resource)


def _pointer_part(text: str) -> str:
    return text.replace("~", "~0").replace("/", "~1")


class GraphSchema:
    """Validates JSON bodies against the OpenAPI description in ``directory``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()
        self._document, self._registry = _load(str(self.directory))
        self._validators: dict[str, OAS30ReadValidator] = {}
        self._lock = threading.Lock()

    def response_pointer(self, template: str, method: str, status: int) -> str | None:
        """The pointer to the JSON schema of the answer to ``method template`` with ``status``,
        or None when the description has no such operation (or no JSON body for it)."""
        operation = self._document["paths"].get(template, {}).get(method.lower())
        if operation is None:
            return None
        key = "2XX" if status < 400 else "4XX" if status < 500 else "5XX"
        response = operation.get("responses", {}).get(key)
        if response is None:
            return None
        if "$ref" in response:
            name = response["$ref"].rsplit("/", 1)[1]
            response = self._document["components"]["responses"][name]
            base = f"#/components/responses/{_pointer_part(name)}"
        else:
            base = f"#/paths/{_pointer_part(template)}/{method.lower()}/responses/{key}"
        if "schema" not in response.get("content", {}).get("application/json", {}):
            return None
        return f"{base}/content/application~1json/schema"

    def validate(self, body: Any, pointer: str) -> str | None:
        """None when ``body`` is valid under ``pointer``, else its violations, one per line."""
        validator = self._validator(pointer)
        errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
        if not errors:
            return None
        return "\n".join(f"{e.json_path}: {e.message}" for e in errors[:5])

    def _validator(self, pointer: str) -> OAS30ReadValidator:
        with self._lock:
            validator = self._validators.get(pointer)
            if validator is None:
                validator = OAS30ReadValidator({"$ref": _BASE + pointer}, registry=self._registry)
                self._validators[pointer] = validator
            return validator
