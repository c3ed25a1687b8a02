"""The OData annotation check (graph/_annotations.py, issue 12 point 8): every annotation of the
documented samples passes it, a wrong one is flagged, and the server records a violation for an
answer whose annotations break it, as it does for schema errors."""

from __future__ import annotations

import os
from typing import Any

import pytest

from ews_listener_emulators.graph._annotations import (
    AnnotationChecker,
    annotations_of,
    resolve_graph_samples_dir,
    sample_bodies,
)
from ews_listener_emulators.graph._contract import GraphAnswer, GraphRequest, Route
from ews_listener_emulators.graph.server import GraphEmulator
from tests.graph_emulator.conftest import ALICE, Call
from tests.graph_emulator.direct import SAMPLES_DIR, samples_available

ROOT = "https://graph.microsoft.com/v1.0"
# The one sample on another root: json-batching.md "assume this response" says beta.
OTHER_ROOTS = {"batch-mixed-statuses.http.txt": "https://graph.microsoft.com/beta"}
needs_samples = pytest.mark.skipif(
    not samples_available() and not os.environ.get("CI"), reason="../shared/graph-samples"
)


@pytest.fixture(scope="module")
def checker() -> AnnotationChecker:
    return AnnotationChecker(SAMPLES_DIR)


@needs_samples
def test_every_sample_annotation_passes(checker: AnnotationChecker) -> None:
    """Each annotation of each documented JSON body has its documented form."""
    bodies = sample_bodies(SAMPLES_DIR)
    seen = {name for found in bodies.values() for b in found for _, name, _, _ in annotations_of(b)}
    assert seen >= {"@odata.nextLink", "@odata.deltaLink", "@removed", "@odata.context"}
    for name, found in bodies.items():
        for body in found:
            assert checker.check(body, OTHER_ROOTS.get(name, ROOT)) == [], name


@needs_samples
@pytest.mark.parametrize(
    ("body", "flagged"),
    [
        ({"@odata.nextLink": "/v1.0/me/mailFolders/delta?$skiptoken=x"}, "absolute URL"),
        ({"@odata.nextLink": "https://example.com/v1.0/me/messages?$skip=2"}, "absolute URL"),
        ({"@odata.nextLink": f"{ROOT}/me/mailFolders/delta?$deltatoken=x"}, "$skiptoken"),
        ({"@odata.nextLink": f"{ROOT}/me/messages"}, "$skiptoken nor $skip"),
        ({"@odata.deltaLink": f"{ROOT}/me/mailFolders/delta?$deltatoken="}, "$deltatoken"),
        ({"@odata.deltaLink": f"{ROOT}/me/messages?$deltatoken=x"}, "delta function"),
        ({"value": [{"id": "x", "@removed": {"reason": "moved"}}]}, "reason"),
        ({"value": [{"@removed": {"reason": "deleted"}}]}, "without an id"),
        ({"@odata.etag": '"abc"'}, 'W/"'),
        ({"@odata.count": -1}, "non-negative"),
        ({"@odata.context": f"{ROOT}/users"}, "$metadata#"),
        ({"@odata.type": "message"}, "#microsoft.graph."),
        ({"@odata.bogus": 1}, "no documented sample"),
    ],
)
def test_a_wrong_annotation_is_flagged(
    checker: AnnotationChecker, body: dict[str, Any], flagged: str
) -> None:
    """Relative or foreign links, links without their token, an unknown @removed reason, a
    strong etag, an undocumented annotation … are each one violation naming the problem."""
    problems = checker.check(body, ROOT)
    assert len(problems) == 1, problems
    assert flagged in problems[0], problems


@needs_samples
def test_samples_are_found_beside_the_schema_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without $GRAPH_SAMPLES_DIR the samples are the graph-samples folder beside the schema."""
    monkeypatch.delenv("GRAPH_SAMPLES_DIR", raising=False)
    assert resolve_graph_samples_dir(SAMPLES_DIR.parent / "graph-schema") == SAMPLES_DIR
    assert resolve_graph_samples_dir(None) is None


@needs_samples
def test_the_server_records_a_wrong_annotation(graph: GraphEmulator, call: Call) -> None:
    """An answer with a relative nextLink is recorded as a violation, like a schema error."""
    assert graph.annotations is not None

    def relative(request: GraphRequest) -> GraphAnswer:
        return GraphAnswer(json={"value": [], "@odata.nextLink": "/v1.0/me/messages?$skip=1"})

    route = Route("GET", "wrongLinks", relative, "/users/{user-id}/wrongLinks", "test.wrong")
    graph.routes.insert(0, route)
    try:
        assert call("GET", f"users/{ALICE}/wrongLinks").status_code == 200
    finally:
        graph.routes.remove(route)
    record = graph.request_log[-1]
    assert record.schema_valid is False
    assert record.schema_error is not None
    assert "absolute URL" in record.schema_error
    graph.request_log.clear()  # the violation was the point; the fixture must not fail on it
