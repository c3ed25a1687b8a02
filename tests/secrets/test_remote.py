"""Azure Key Vault and HashiCorp Vault secret sources against local HTTPS fakes of their APIs."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import certifi
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydantic import TypeAdapter

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.token_server import TokenServer
from listener.errors import SecretError
from listener.secrets import AzureKeyVaultSecret, HashicorpVaultSecret, SecretSpec
from tests.secrets.conftest import APPROLE, IDENTITY_HEADER, VAULT_TOKEN, FakeServer

SPEC: TypeAdapter[SecretSpec] = TypeAdapter(SecretSpec)
VALUE = "jhyun/ku[ojubbj]/jhgfdrg^7*dfg&jkiu#bjshdm,ktttdg"


@pytest.fixture
def identity(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The App Service managed identity environment, pointing at the fake."""
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"{fake.url}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", IDENTITY_HEADER)
    monkeypatch.delenv("IDENTITY_SERVER_THUMBPRINT", raising=False)


def issued_to(tokens: TokenServer, app: str) -> Callable[[str], bool]:
    """Key Vault's check of a bearer token: issued by ``tokens`` to ``app`` for the vault."""

    def accept(bearer: str) -> bool:
        try:
            claims = tokens.verify(bearer, audience="https://vault.azure.net")
        except Exception:
            return False
        return bool(claims["appid"] == app)

    return accept


def key_vault(fake: FakeServer, ca: EmulatorCA, **extra: Any) -> AzureKeyVaultSecret:
    spec = SPEC.validate_python(
        {
            "source": "azure_key_vault",
            "vault_url": fake.url,
            "name": "sales-secret",
            "credential": {"type": "managed_identity"},
            "ca_bundle": str(ca.ca_file),
            "verify_challenge_resource": False,
            "timeout": 5,
            "retries": 0,
        }
        | extra
    )
    assert isinstance(spec, AzureKeyVaultSecret)
    return spec


def vault(fake: FakeServer, ca: EmulatorCA, **extra: Any) -> HashicorpVaultSecret:
    spec = SPEC.validate_python(
        {
            "source": "hashicorp_vault",
            "address": fake.url,
            "path": "ews/sales",
            "key": "client_secret",
            "auth": {"method": "token", "token": {"source": "inline", "value": VAULT_TOKEN}},
            "ca_bundle": str(ca.ca_file),
            "timeout": 5,
        }
        | extra
    )
    assert isinstance(spec, HashicorpVaultSecret)
    return spec


@pytest.mark.usefixtures("identity")
def test_key_vault_reads_after_challenge(
    fake: FakeServer, ca: EmulatorCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 401 challenge is answered with a managed identity token; the value is returned."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())  # must not override ca_bundle
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    fake.state.secrets["sales-secret"] = VALUE
    spec = key_vault(fake, ca)
    assert spec.read().get_secret_value() == VALUE
    assert fake.state.identity_calls == 1
    kv_calls = [r for r in fake.state.requests if r[1].startswith("/secrets/")]
    assert len(kv_calls) == 2  # the unauthenticated challenge, then the authorised read
    assert VALUE not in repr(spec)


def test_key_vault_with_client_secret_identity(fake: FakeServer, ca: EmulatorCA) -> None:
    """A client-secret identity gets its Key Vault token from an Entra-shaped authority."""
    tokens = TokenServer(ca=ca)
    tokens.add_tenant("contoso.onmicrosoft.com")
    tokens.register_app("contoso.onmicrosoft.com", "kv-reader", secret="kv/secret+1")
    tokens.start()
    try:
        fake.state.accept = issued_to(tokens, "kv-reader")
        fake.state.challenge_tenant = "contoso.onmicrosoft.com"
        fake.state.secrets["sales-secret"] = VALUE
        identity = {
            "type": "client_secret",
            "tenant_id": "contoso.onmicrosoft.com",
            "client_id": "kv-reader",
            "secret": {"source": "inline", "value": "kv/secret+1"},
        }
        spec = key_vault(fake, ca, credential=identity, authority_host=tokens.url)
        assert spec.read().get_secret_value() == VALUE
        assert tokens.request_count("kv-reader") == 1
    finally:
        tokens.stop()


def test_key_vault_with_workload_identity(fake: FakeServer, ca: EmulatorCA, tmp_path: Path) -> None:
    """A workload identity exchanges its federated token file (a signed JWT) at the authority."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "federated")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    tenant = "contoso.onmicrosoft.com"
    tokens = TokenServer(ca=ca)
    tokens.add_tenant(tenant)
    tokens.register_app(
        tenant, "wl-app", certificate_pem=cert.public_bytes(serialization.Encoding.PEM)
    )
    tokens.start()
    try:
        thumbprint = base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA1())).decode()  # noqa: S303
        federated = jwt.encode(
            {
                "iss": "wl-app",
                "sub": "wl-app",
                "aud": tokens.token_endpoint(tenant),
                "iat": int(now.timestamp()),
                "nbf": int(now.timestamp()),
                "exp": int(now.timestamp()) + 600,
                "jti": "1",
            },
            key,
            algorithm="RS256",
            headers={"x5t": thumbprint.rstrip("=")},
        )
        token_file = tmp_path / "federated-token"
        token_file.write_text(federated)
        fake.state.accept = issued_to(tokens, "wl-app")
        fake.state.challenge_tenant = tenant
        fake.state.secrets["sales-secret"] = VALUE
        identity = {
            "type": "workload_identity",
            "tenant_id": tenant,
            "client_id": "wl-app",
            "token_file": str(token_file),
        }
        spec = key_vault(fake, ca, credential=identity, authority_host=tokens.url)
        assert spec.read().get_secret_value() == VALUE
        assert tokens.requests[-1].auth_method == "private_key_jwt"
    finally:
        tokens.stop()


@pytest.mark.usefixtures("identity")
def test_key_vault_cached_then_refreshed(fake: FakeServer, ca: EmulatorCA) -> None:
    """A Key Vault secret is read once; refresh() reads the rotated value."""
    fake.state.secrets["sales-secret"] = "one"
    spec = key_vault(fake, ca)
    assert spec.read().get_secret_value() == "one"
    fake.state.secrets["sales-secret"] = "two"
    assert spec.read().get_secret_value() == "one"
    assert spec.refresh().get_secret_value() == "two"


@pytest.mark.usefixtures("identity")
def test_key_vault_pinned_version(fake: FakeServer, ca: EmulatorCA) -> None:
    """A version pins the read to /secrets/{name}/{version}."""
    fake.state.secrets["sales-secret/abc123"] = "pinned"
    assert key_vault(fake, ca, version="abc123").read().get_secret_value() == "pinned"


@pytest.mark.usefixtures("identity")
def test_key_vault_404(fake: FakeServer, ca: EmulatorCA) -> None:
    """A missing secret says not found (404) and names the vault and secret."""
    with pytest.raises(SecretError, match="not found") as info:
        key_vault(fake, ca).read()
    assert "sales-secret" in str(info.value)


@pytest.mark.usefixtures("identity")
def test_key_vault_403(fake: FakeServer, ca: EmulatorCA) -> None:
    """A forbidden secret says access denied and how to grant it."""
    fake.state.secrets["sales-secret"] = VALUE
    fake.state.forbidden.add("sales-secret")
    with pytest.raises(SecretError, match="403") as info:
        key_vault(fake, ca).read()
    assert "Key Vault Secrets User" in str(info.value)


@pytest.mark.usefixtures("identity")
def test_key_vault_tls_failure(fake: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A vault certificate not signed by ca_bundle fails clearly."""
    other = EmulatorCA(tmp_path_factory.mktemp("other"))
    with pytest.raises(SecretError, match="ca_bundle"):
        key_vault(fake, other).read()


def test_key_vault_needs_https() -> None:
    """vault_url must be https."""
    with pytest.raises(ValueError, match="https"):
        SPEC.validate_python(
            {
                "source": "azure_key_vault",
                "vault_url": "http://127.0.0.1:1",
                "name": "x",
                "credential": {"type": "managed_identity"},
            }
        )


def test_vault_token_read(
    fake: FakeServer, ca: EmulatorCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KV v2 read with X-Vault-Token returns the key's value, despite REQUESTS_CA_BUNDLE."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    fake.state.kv["secret/ews/sales"] = {"client_secret": VALUE, "other": "x"}
    spec = vault(fake, ca)
    assert spec.read().get_secret_value() == VALUE
    reads = [r for r in fake.state.requests if r[1] == "/v1/secret/data/ews/sales"]
    assert reads[-1][2]["X-Vault-Token"] == VAULT_TOKEN
    assert VAULT_TOKEN not in repr(spec)


def test_vault_approle(fake: FakeServer, ca: EmulatorCA) -> None:
    """AppRole logs in with role_id and secret_id, then reads."""
    fake.state.kv["kv/ews/sales"] = {"client_secret": VALUE}
    auth = {
        "method": "approle",
        "role_id": APPROLE[0],
        "secret_id": {"source": "inline", "value": APPROLE[1]},
    }
    spec = vault(fake, ca, auth=auth, mount="kv")
    assert spec.read().get_secret_value() == VALUE
    assert fake.state.approle_logins == 1


def test_vault_approle_refused(fake: FakeServer, ca: EmulatorCA) -> None:
    """A refused AppRole login is reported as such."""
    auth = {"method": "approle", "role_id": "x", "secret_id": {"source": "inline", "value": "y"}}
    with pytest.raises(SecretError, match="AppRole"):
        vault(fake, ca, auth=auth).read()


def test_vault_403(fake: FakeServer, ca: EmulatorCA) -> None:
    """A bad token gives permission denied (403) with the path."""
    fake.state.kv["secret/ews/sales"] = {"client_secret": VALUE}
    auth = {"method": "token", "token": {"source": "inline", "value": "wrong-token"}}
    with pytest.raises(SecretError, match="403") as info:
        vault(fake, ca, auth=auth).read()
    assert "secret/data/ews/sales" in str(info.value)
    assert "wrong-token" not in str(info.value)


def test_vault_404_and_missing_key(fake: FakeServer, ca: EmulatorCA) -> None:
    """A missing path is 404; a missing key lists the keys (not the values)."""
    with pytest.raises(SecretError, match="404"):
        vault(fake, ca).read()
    fake.state.kv["secret/ews/sales"] = {"other": "hidden-value"}
    with pytest.raises(SecretError, match="keys: other") as info:
        vault(fake, ca).read()
    assert "hidden-value" not in str(info.value)


def test_vault_tls_failure(fake: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A certificate not signed by ca_bundle names ca_bundle."""
    other = EmulatorCA(tmp_path_factory.mktemp("other"))
    with pytest.raises(SecretError, match="ca_bundle"):
        vault(fake, other).read()


def test_vault_token_from_env_missing(fake: FakeServer, ca: EmulatorCA) -> None:
    """A Vault token from a missing env variable is reported with the variable's name."""
    auth = {"method": "token", "token": {"source": "env", "name": "T_NO_VAULT_TOKEN"}}
    with pytest.raises(SecretError, match="T_NO_VAULT_TOKEN"):
        vault(fake, ca, auth=auth).read()
