"""Small HTTPS fakes of the Azure Key Vault and HashiCorp Vault REST APIs on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from ews_listener_emulators._http import LoopbackServer, QuietHandler
from ews_listener_emulators.ca import EmulatorCA

KV_TOKEN = "kv-access-token-0123456789"
IDENTITY_HEADER = "identity-header-value"
VAULT_TOKEN = "hvs.vault-token-0123456789"
APPROLE = ("role-1234", "secret-id-5678")


@dataclass
class FakeState:
    """What the fakes serve and what they saw."""

    secrets: dict[str, str] = field(default_factory=dict)  # Key Vault: name -> value
    forbidden: set[str] = field(default_factory=set)
    kv: dict[str, dict[str, Any]] = field(default_factory=dict)  # Vault: "mount/path" -> data
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    identity_calls: int = 0
    accept: Callable[[str], bool] | None = None  # other bearer tokens Key Vault accepts
    challenge_tenant: str = "TENANT"  # the vault's tenant, named in its 401 challenge
    approle_logins: int = 0


class _Handler(QuietHandler):
    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self.send_body(status, json.dumps(body).encode(), "application/json", headers)

    @property
    def state(self) -> FakeState:
        owner: Any = self.server.owner  # type: ignore[attr-defined]
        state: FakeState = owner.state
        return state

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.state.requests.append(("GET", url.path, dict(self.headers)))
        if url.path == "/msi/token":
            return self._identity(parse_qs(url.query))
        if url.path.startswith("/secrets/"):
            return self._key_vault(url.path, parse_qs(url.query))
        if url.path.startswith("/v1/"):
            return self._vault_read(url.path)
        return self._json(404, {"error": "no such route"})

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = self.read_body(1 << 16) or b"{}"
        self.state.requests.append(("POST", url.path, dict(self.headers)))
        if url.path == "/v1/auth/approle/login":
            data = json.loads(body)
            self.state.approle_logins += 1
            if (data.get("role_id"), data.get("secret_id")) != APPROLE:
                return self._json(400, {"errors": ["invalid role or secret ID"]})
            return self._json(
                200,
                {"auth": {"client_token": VAULT_TOKEN, "lease_duration": 3600, "renewable": True}},
            )
        return self._json(404, {"errors": []})

    # App Service managed identity (IDENTITY_ENDPOINT / IDENTITY_HEADER), as azure-identity calls.
    def _identity(self, query: dict[str, list[str]]) -> None:
        self.state.identity_calls += 1
        if self.headers.get("X-IDENTITY-HEADER") != IDENTITY_HEADER:
            return self._json(401, {"error": "bad identity header"})
        resource = query.get("resource", [""])[0]
        return self._json(
            200,
            {
                "access_token": KV_TOKEN,
                "expires_on": str(int(time.time()) + 3600),
                "resource": resource,
                "token_type": "Bearer",
            },
        )

    def _key_vault(self, path: str, query: dict[str, list[str]]) -> None:
        # 7.x, or a dated version such as 2025-07-01 in recent SDKs: any, but it must be there.
        if not query.get("api-version", [""])[0]:
            return self._json(400, {"error": {"code": "BadParameter", "message": "api-version"}})
        bearer = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        accept = self.state.accept
        if bearer != KV_TOKEN and not (accept is not None and bearer and accept(bearer)):
            challenge = (
                "Bearer authorization="
                f'"https://login.microsoftonline.com/{self.state.challenge_tenant}", '
                'resource="https://vault.azure.net"'
            )
            return self._json(
                401,
                {
                    "error": {
                        "code": "Unauthorized",
                        "message": "AKV10000: Request is missing a Bearer",
                    }
                },
                {"WWW-Authenticate": challenge},
            )
        parts = [p for p in path.split("/") if p]  # secrets, name, [version]
        name = parts[1]
        if name in self.state.forbidden:
            return self._json(
                403,
                {
                    "error": {
                        "code": "Forbidden",
                        "message": "Caller is not authorized to perform action on resource.",
                        "innererror": {"code": "ForbiddenByRbac"},
                    }
                },
            )
        key = f"{name}/{parts[2]}" if len(parts) > 2 else name
        if key not in self.state.secrets:
            return self._json(
                404,
                {
                    "error": {
                        "code": "SecretNotFound",
                        "message": f"A secret with (name/id) {name} was not found in this vault.",
                    }
                },
            )
        host = self.headers.get("Host")
        return self._json(
            200,
            {
                "value": self.state.secrets[key],
                "id": f"https://{host}/secrets/{name}/0123456789abcdef",
                "attributes": {"enabled": True, "created": 1700000000, "updated": 1700000000},
            },
        )

    def _vault_read(self, path: str) -> None:
        if self.headers.get("X-Vault-Token") != VAULT_TOKEN:
            return self._json(403, {"errors": ["permission denied"]})
        parts = path.split("/")  # "", v1, mount, data, path...
        if len(parts) < 5 or parts[3] != "data":
            return self._json(404, {"errors": []})
        key = f"{parts[2]}/{'/'.join(parts[4:])}"
        if key not in self.state.kv:
            return self._json(404, {"errors": []})
        return self._json(
            200,
            {
                "data": {
                    "data": self.state.kv[key],
                    "metadata": {"version": 1, "deletion_time": "", "destroyed": False},
                }
            },
        )


class FakeServer(LoopbackServer):
    """Key Vault, an App Service identity endpoint and Vault in one HTTPS server."""

    def __init__(self, ca: EmulatorCA) -> None:
        super().__init__(_Handler, ssl_context=ca.server_context())
        self.state = FakeState()


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> EmulatorCA:
    """The emulator's throw-away CA."""
    return EmulatorCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def fake(ca: EmulatorCA) -> Iterator[FakeServer]:
    """The running fake, fresh per test."""
    server = FakeServer(ca)
    server.start()
    yield server
    server.stop()
