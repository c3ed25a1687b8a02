"""A world for the Graph emulator's conformance tests: one CA, one token server, an EWS emulator
and a Graph emulator beside it on the same mail store and app scopes.

Tests talk to both over real HTTPS with httpx, getting their tokens from the token server with the
client-credentials grant as Microsoft documents it (scope ``https://graph.microsoft.com/.default``);
schema validation is on when ``$GRAPH_SCHEMA_DIR`` or ``../shared/graph-schema`` has Microsoft's
OpenAPI description, and the ``graph`` fixture fails a test whose answers violate it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer

TENANT = "contoso.onmicrosoft.com"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"  # Mail.ReadWrite (the default)
READER_ID = "22222222-2222-3333-4444-555555555555"  # Mail.Read only
NOROLE_ID = "33333333-2222-3333-4444-555555555555"  # no Graph role
SCOPED_ID = "99999999-2222-3333-4444-555555555555"  # scoped to Alice in the tests that say so
SECRET = "s3cret"
ALICE = "alice@contoso.com"
BOB = "bob@contoso.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
EWS_SCOPE = "https://outlook.office365.com/.default"
_SHARED = Path(__file__).resolve().parents[2].parent / "shared"
EWS_SCHEMA_DIR = _SHARED / "ews-schema"
GRAPH_SCHEMA_DIR = Path(os.environ.get("GRAPH_SCHEMA_DIR") or _SHARED / "graph-schema")


@dataclass(frozen=True)
class World:
    ca: EmulatorCA
    token_server: TokenServer
    ews: EwsEmulator
    graph: GraphEmulator


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The servers, started once per session."""
    ca = EmulatorCA(tmp_path_factory.mktemp("graph-ca"))
    token_server = TokenServer(ca=ca)
    token_server.add_tenant(TENANT)
    token_server.register_app(TENANT, CLIENT_ID, secret=SECRET)
    token_server.register_app(TENANT, READER_ID, secret=SECRET, graph_roles=("Mail.Read",))
    token_server.register_app(TENANT, NOROLE_ID, secret=SECRET, graph_roles=())
    token_server.register_app(TENANT, SCOPED_ID, secret=SECRET)
    ews_schema = EWS_SCHEMA_DIR if (EWS_SCHEMA_DIR / "ews.xsd").is_file() else None
    ews = EwsEmulator(token_server, ca, schema_dir=ews_schema, validate_responses=True)
    graph_schema = GRAPH_SCHEMA_DIR if GRAPH_SCHEMA_DIR.is_dir() else None
    graph = GraphEmulator.beside(ews, token_server, ca, schema_dir=graph_schema)
    token_server.start()
    ews.start()
    graph.start()
    yield World(ca, token_server, ews, graph)
    graph.stop()
    ews.stop()
    token_server.stop()


@pytest.fixture
def graph(world: World) -> Iterator[GraphEmulator]:
    """The Graph emulator, reset, with Alice's and Bob's mailboxes; fails on schema violations."""
    world.ews.reset()
    world.graph.reset()
    world.ews.add_mailbox(ALICE, "Alice Example")
    world.ews.add_mailbox(BOB, "Bob Example")
    yield world.graph
    problems = [r for r in world.graph.request_log if r.schema_valid is False]
    assert problems == [], f"Graph schema violations: {problems}"
    ews_problems = [
        r for r in world.ews.request_log if r.schema_valid is False or r.response_valid is False
    ]
    assert ews_problems == [], f"EWS schema violations: {ews_problems}"


@pytest.fixture
def ews(world: World, graph: GraphEmulator) -> EwsEmulator:
    """The EWS emulator on the same store (reset by ``graph``)."""
    return world.ews


@pytest.fixture(scope="session")
def http(world: World) -> Iterator[httpx.Client]:
    """An HTTPS client that trusts the emulator CA and nothing from the environment."""
    client = httpx.Client(verify=world.ca.client_context(), trust_env=False, timeout=30)
    yield client
    client.close()


TokenFactory = Callable[..., str]


@pytest.fixture(scope="session")
def token(world: World, http: httpx.Client) -> Callable[..., str]:
    """An access token from the token server, asked for as Microsoft documents it."""
    cache: dict[tuple[str, str], str] = {}

    def fetch(client_id: str = CLIENT_ID, scope: str = GRAPH_SCOPE) -> str:
        if (client_id, scope) not in cache:
            response = http.post(
                world.token_server.token_endpoint(TENANT),
                data={
                    "grant_type": "client_credentials",
                    "client_id": client_id,
                    "client_secret": SECRET,
                    "scope": scope,
                },
            )
            response.raise_for_status()
            cache[(client_id, scope)] = response.json()["access_token"]
        return cache[(client_id, scope)]

    return fetch


Call = Callable[..., httpx.Response]


@pytest.fixture
def call(graph: GraphEmulator, http: httpx.Client, token: TokenFactory) -> Call:
    """``call("GET", "users/alice@contoso.com/mailFolders", ...)``: a request to the Graph
    endpoint (a path relative to ``/v1.0`` or a full URL) with a Mail.ReadWrite token."""

    def send(
        method: str,
        path: str,
        *,
        client_id: str = CLIENT_ID,
        bearer: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: object,
    ) -> httpx.Response:
        url = path if path.startswith("https://") else f"{graph.url}/{path}"
        sent = {"Authorization": f"Bearer {bearer if bearer is not None else token(client_id)}"}
        sent.update(headers or {})
        return http.request(method, url, headers=sent, **kwargs)  # type: ignore[arg-type]

    return send
