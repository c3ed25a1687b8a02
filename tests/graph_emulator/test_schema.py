"""Every JSON answer of the Graph emulator is checked against Microsoft's OpenAPI description
(``$GRAPH_SCHEMA_DIR``); a violation is recorded in the request log (and the ``graph`` fixture
fails the test that caused it)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ews_listener_emulators.graph._contract import GraphAnswer, GraphRequest, Route
from ews_listener_emulators.graph._schema import GraphSchema
from ews_listener_emulators.graph.server import GraphEmulator
from tests.graph_emulator.conftest import ALICE, GRAPH_SCHEMA_DIR, Call


@pytest.fixture
def validating(graph: GraphEmulator) -> GraphEmulator:
    """The emulator, which must validate (fails when GRAPH_SCHEMA_DIR is set but unusable)."""
    if graph.schema is None:
        if os.environ.get("GRAPH_SCHEMA_DIR"):
            pytest.fail(f"GRAPH_SCHEMA_DIR={GRAPH_SCHEMA_DIR} has no OpenAPI description")
        pytest.skip("no ../shared/graph-schema here: Graph schema validation is off")
    return graph


def test_answers_are_validated(validating: GraphEmulator, call: Call) -> None:
    """Lists, entities, creations and errors are all checked, and all valid."""
    call("GET", f"users/{ALICE}/mailFolders?$top=2")
    call("GET", f"users/{ALICE}/mailFolders/inbox")
    call("POST", f"users/{ALICE}/mailFolders/inbox/childFolders", json={"displayName": "A"})
    call("GET", f"users/{ALICE}/mailFolders/inbox/childFolders")
    call("GET", f"users/{ALICE}/mailFolders/nope")
    call("GET", f"users/{ALICE}/mailFolders", headers={"Authorization": "Bearer x"})
    records = list(validating.request_log)
    assert [r.schema_valid for r in records] == [True] * 6, records


@pytest.fixture
def broken_route(validating: GraphEmulator) -> Iterator[None]:
    """A route answering a mailFolder whose displayName is a number, for this test only."""

    def broken(request: GraphRequest) -> GraphAnswer:
        return GraphAnswer(json={"id": "x", "displayName": 3})

    route = Route(
        "GET",
        "mailFolders/{folder}/broken",
        broken,
        "/users/{user-id}/mailFolders/{mailFolder-id}",
        "user_GetMailFolder",
    )
    validating.routes.insert(0, route)
    yield
    validating.routes.remove(route)


def test_a_violation_is_recorded(validating: GraphEmulator, call: Call, broken_route: None) -> None:
    """An answer that breaks the schema is sent as it is and recorded with the violation."""
    response = call("GET", f"users/{ALICE}/mailFolders/inbox/broken")
    assert response.status_code == 200
    record = validating.request_log[-1]
    assert record.schema_valid is False
    assert record.schema_error is not None
    assert "$.displayName: 3 is not of type 'string'" in record.schema_error
    validating.request_log.clear()  # expected here; the fixture fails on any other


def test_validators_are_compiled_once_per_process() -> None:
    """Two validators of one folder share the loaded description (functools.lru_cache)."""
    if not GRAPH_SCHEMA_DIR.is_dir():
        pytest.skip("no Graph schema folder")
    first, second = GraphSchema(GRAPH_SCHEMA_DIR), GraphSchema(GRAPH_SCHEMA_DIR)
    assert first._document is second._document
