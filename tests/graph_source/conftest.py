"""The Graph mail source against the Graph emulator over real HTTPS (no mocked httpx).

The world (CA, token server, EWS emulator, Graph emulator beside it on one mail store) is the one
``tests/graph_emulator`` starts; schema validation is on when Microsoft's OpenAPI description is
at ``$GRAPH_SCHEMA_DIR`` or ``../shared/graph-schema``, and required under ``CI=true`` (a missing
description fails there instead of skipping the check).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from ews_listener_emulators.graph.server import GraphEmulator
from listener.abc import AccessToken
from listener.sources.graph.factory import GraphSources
from listener.sources.graph.source import GraphMailSource
from tests.graph_emulator import conftest as _emulator
from tests.graph_emulator import test_two_protocols as _two_protocols
from tests.graph_emulator.conftest import (
    ALICE,
    CLIENT_ID,
    GRAPH_SCHEMA_DIR,
    GRAPH_SCOPE,
    SECRET,
    TENANT,
    World,
)

# The world and its fixtures are tests/graph_emulator's (one CA, token server, EWS + Graph).
world = _emulator.world
graph = _emulator.graph
ews = _emulator.ews
http = _emulator.http
token = _emulator.token
call = _emulator.call
account = _two_protocols.account  # exchangelib on the same store, to see what Graph did


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI", "").lower() == "true" and not GRAPH_SCHEMA_DIR.is_dir():
        raise pytest.UsageError(
            f"CI=true but the Graph OpenAPI description is missing at {GRAPH_SCHEMA_DIR}: "
            "set GRAPH_SCHEMA_DIR (tests/graph_source validate every answer against it)"
        )


class EmulatorTokens:
    """A ``TokenProvider`` asking the token server for Graph tokens; counts what it did."""

    name = "graph"

    def __init__(self, world: World, client_id: str = CLIENT_ID) -> None:
        self._world = world
        self._client_id = client_id
        self._token: AccessToken | None = None
        self._lock = threading.Lock()
        self.fetched = 0
        self.invalidated = 0

    def get_token(self, *, force_refresh: bool = False) -> AccessToken:
        with self._lock:
            if self._token is None or force_refresh:
                with httpx.Client(verify=self._world.ca.client_context(), trust_env=False) as c:
                    answer = c.post(
                        self._world.token_server.token_endpoint(TENANT),
                        data={
                            "grant_type": "client_credentials",
                            "client_id": self._client_id,
                            "client_secret": SECRET,
                            "scope": GRAPH_SCOPE,
                        },
                    )
                answer.raise_for_status()
                self.fetched += 1
                self._token = AccessToken(
                    answer.json()["access_token"], datetime.now(UTC) + timedelta(hours=1)
                )
            return self._token

    def invalidate(self, token: str) -> None:
        with self._lock:
            self.invalidated += 1
            if self._token is not None and self._token.token == token:
                self._token = None


class Providers:
    """What ``GraphSources`` needs of ``listener.auth.registry.TokenProviders``: ``get``."""

    def __init__(self, tokens: EmulatorTokens) -> None:
        self.tokens = tokens

    def get(self, name: str) -> EmulatorTokens:
        return self.tokens


def mailbox_config(world: World, graph: GraphEmulator, **overrides: Any) -> SimpleNamespace:
    """The parts of a ``MailboxConfig`` the factory reads."""
    values: dict[str, Any] = {
        "address": ALICE,
        "credential": "graph",
        "endpoint": graph.url,
        "folder": "inbox",
        "ca_bundle": world.ca.ca_file,
        "source": "graph",
    }
    values.update(overrides)
    return SimpleNamespace(**values)


@pytest.fixture
def tokens(world: World) -> EmulatorTokens:
    return EmulatorTokens(world)


@pytest.fixture
def factory(tokens: EmulatorTokens) -> Iterator[GraphSources]:
    """A factory whose inline waits are short (no sleeping tests)."""
    settings = SimpleNamespace(credentials={"graph": SimpleNamespace(max_connections=8)})
    sources = GraphSources(
        Providers(tokens), settings, max_inline_wait=1.0, min_back_off=0.01, page_limit=200
    )
    outcomes: list[tuple[str, str]] = []
    backoffs: list[tuple[str, float]] = []
    sources.on_request = lambda op, outcome: outcomes.append((op, outcome))
    sources.on_back_off = lambda cred, seconds: backoffs.append((cred, seconds))
    sources.outcomes = outcomes  # type: ignore[attr-defined]
    sources.backoffs = backoffs  # type: ignore[attr-defined]
    yield sources
    sources.close()


@pytest.fixture
def source(world: World, graph: GraphEmulator, factory: GraphSources) -> GraphMailSource:
    return factory.source("alice", mailbox_config(world, graph))
