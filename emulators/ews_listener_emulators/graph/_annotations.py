"""The OData annotations of the Graph emulator's JSON answers, checked against Microsoft's
documented samples (issue 12, point 8: the OpenAPI description does not model them).

The samples are ``../shared/graph-samples`` (``$GRAPH_SAMPLES_DIR``, else the ``graph-samples``
folder beside ``$GRAPH_SCHEMA_DIR``). ``AnnotationChecker`` reads every JSON body in them and
learns which annotations Graph documents (``@odata.context``, ``item@odata.context``,
``@odata.nextLink`` …); an answer carrying any other is a violation. Each documented annotation
has a form, written here from the samples, and an answer's annotation must have it:

- ``@odata.context`` (and ``<property>@odata.context``): ``{service root}/$metadata#…``, the
  fragment an entity set, type or path (``#Collection(message)``, ``#users('…')/messages/$entity``,
  ``#message``, ``#subscriptions/$entity``: the ``message-*``, ``delta-*``, ``attachment-*``,
  ``subscription-create`` samples).
- ``@odata.nextLink``: an absolute URL under the same service root; a delta page's names
  ``…/delta?$skiptoken=…`` (``delta-*-page-next``), any other ``$skiptoken`` (``batch-mixed-
  statuses``) or ``$skip``. ``$skip`` is in no sample: it is the form concepts/paging.md allows and
  Exchange uses for mail folders and messages (``folders.PAGE_SIZE``).
- ``@odata.deltaLink``: an absolute URL under the service root, ``…/delta?$deltatoken=…`` with a
  token (``delta-messages-last-page-deltalink``, ``…-next-round-removed``).
- ``@removed``: ``{"reason": "deleted" | "changed"}`` on an entry with an ``id``
  (``delta-messages-next-round-removed``; the reasons of concepts/delta-query-overview.md).
- ``@odata.etag``: a weak entity tag, ``W/"…"`` (``message-get`` and the delta pages).
- ``@odata.count``: a non-negative integer (``batch-mixed-statuses``).
- ``@odata.type``: ``#microsoft.graph.<type>``, the namespace in any case
  (``webhook-change-notification`` writes ``#Microsoft.Graph.Message``).
- ``@odata.id``: a non-empty resource path (``webhook-change-notification``).

Samples hold placeholders (``{_skipToken_}``); a token is only required to be non-empty.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "SAMPLES_DIR_ENV",
    "AnnotationChecker",
    "annotations_of",
    "resolve_graph_samples_dir",
    "sample_bodies",
]

SAMPLES_DIR_ENV = "GRAPH_SAMPLES_DIR"
_SAMPLE_GLOB = "*.http.txt"
_ETAG = re.compile(r'W/"[^"]+"')
_TYPE = re.compile(r"#microsoft\.graph\.[A-Za-z]\w*", re.IGNORECASE)
_FRAGMENT = re.compile(r"[A-Za-z][\w.]*(\(.*\))?(/.*)?")
_REASONS = frozenset({"deleted", "changed"})


def resolve_graph_samples_dir(schema_dir: str | Path | None) -> Path | None:
    """``$GRAPH_SAMPLES_DIR``, else ``graph-samples`` beside the schema folder; None when there
    are no samples there (the annotation check is off then)."""
    explicit = os.environ.get(SAMPLES_DIR_ENV)
    candidates = [Path(explicit)] if explicit else []
    if schema_dir is not None:
        candidates.append(Path(schema_dir).resolve().parent / "graph-samples")
    for candidate in candidates:
        if any(candidate.glob(_SAMPLE_GLOB)):
            return candidate
    return None


def _json_bodies(text: str) -> Iterator[Any]:
    """Every JSON value in the parts of one sample file (request bodies and responses)."""
    decoder = json.JSONDecoder()
    for part in re.split(r"^### (?:request|response|body)\s*$", text, flags=re.MULTILINE):
        start = part.find("{")
        if start < 0:
            continue
        try:
            value, _ = decoder.raw_decode(part[start:])
        except ValueError:
            continue  # prose, MIME or an abbreviated body ({Raw bytes of the file})
        yield value


def sample_bodies(directory: str | Path) -> dict[str, list[Any]]:
    """The JSON bodies of every ``*.http.txt`` sample in ``directory``, by file name."""
    return {
        path.name: list(_json_bodies(path.read_text(encoding="utf-8")))
        for path in sorted(Path(directory).glob(_SAMPLE_GLOB))
    }


def annotations_of(body: Any, where: str = "$") -> Iterator[tuple[str, str, Any, Any]]:
    """``(where, annotation, value, holder)`` for each annotation in ``body``: ``annotation`` is
    the part from ``@`` on (``item@odata.context`` → ``@odata.context``), ``holder`` the object."""
    if isinstance(body, dict):
        for key, value in body.items():
            if "@" in key:
                yield f"{where}.{key}", "@" + key.split("@", 1)[1], value, body
            yield from annotations_of(value, f"{where}.{key}")
    elif isinstance(body, list):
        for index, value in enumerate(body):
            yield from annotations_of(value, f"{where}[{index}]")


def _under(value: Any, base: str) -> str | None:
    if not isinstance(value, str):
        return "is not a string"
    if not value.startswith(base + "/"):
        return f"is not an absolute URL under the service root {base}"
    return None


def _query(value: str) -> dict[str, list[str]]:
    # Links write $ as is (the samples) or as %24 (Exchange's $skip links); parse_qs decodes both.
    return parse_qs(urlsplit(value).query, keep_blank_values=True)


def _context(value: Any, base: str, _: Any) -> str | None:
    problem = _under(value, base)
    if problem is not None:
        return problem
    prefix = f"{base}/$metadata#"
    if not value.startswith(prefix) or not _FRAGMENT.fullmatch(value[len(prefix) :]):
        return f"is not {prefix}<entity set, type or path>"
    return None


def _is_delta(value: str) -> bool:
    return urlsplit(value).path.rstrip("/").endswith(("/delta", "/delta()"))


def _next_link(value: Any, base: str, _: Any) -> str | None:
    problem = _under(value, base)
    if problem is not None:
        return problem
    query = _query(value)
    if _is_delta(value):
        if not any(query.get("$skiptoken", [])):
            return "is a delta page's nextLink without a $skiptoken"
        return None
    if not any(query.get("$skiptoken", [])) and not any(query.get("$skip", [])):
        return "has neither $skiptoken nor $skip"
    return None


def _delta_link(value: Any, base: str, _: Any) -> str | None:
    problem = _under(value, base)
    if problem is not None:
        return problem
    if not _is_delta(value):
        return "is not a link to a delta function"
    if not any(_query(value).get("$deltatoken", [])):
        return "has no $deltatoken"
    return None


def _removed(value: Any, _: str, holder: Any) -> str | None:
    if not isinstance(value, dict) or set(value) != {"reason"} or value["reason"] not in _REASONS:
        return 'is not {"reason": "deleted" | "changed"}'
    if not isinstance(holder, dict) or not holder.get("id"):
        return "is on an entry without an id"
    return None


def _etag(value: Any, _: str, __: Any) -> str | None:
    return None if isinstance(value, str) and _ETAG.fullmatch(value) else 'is not W/"…"'


def _count(value: Any, _: str, __: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return None if ok else "is not a non-negative integer"


def _odata_type(value: Any, _: str, __: Any) -> str | None:
    ok = isinstance(value, str) and _TYPE.fullmatch(value)
    return None if ok else "is not #microsoft.graph.<type>"


def _odata_id(value: Any, _: str, __: Any) -> str | None:
    return None if isinstance(value, str) and value else "is not a resource path"


_Rule = Callable[[Any, str, Any], str | None]
_RULES: dict[str, _Rule] = {
    "@odata.context": _context,
    "@odata.nextLink": _next_link,
    "@odata.deltaLink": _delta_link,
    "@removed": _removed,
    "@odata.etag": _etag,
    "@odata.count": _count,
    "@odata.type": _odata_type,
    "@odata.id": _odata_id,
}


@functools.lru_cache(maxsize=4)
def _documented(directory: str) -> frozenset[str]:
    return frozenset(
        name
        for bodies in sample_bodies(directory).values()
        for body in bodies
        for _, name, _, _ in annotations_of(body)
    )


class AnnotationChecker:
    """Checks the annotations of JSON bodies against the forms the samples in ``directory``
    document; ``check`` answers the violations, one line each."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).resolve()
        self.documented = _documented(str(self.directory))

    def check(self, body: Any, base_url: str) -> list[str]:
        """The violations in ``body`` of an answer from the service root ``base_url``."""
        problems: list[str] = []
        for where, name, value, holder in annotations_of(body):
            rule = _RULES.get(name)
            if name not in self.documented or rule is None:
                problems.append(f"{where}: {name} is in no documented sample")
                continue
            problem = rule(value, base_url.rstrip("/"), holder)
            if problem is not None:
                problems.append(f"{where}: {value!r} {problem}")
        return problems
