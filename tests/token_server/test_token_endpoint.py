"""Discovery, the three client authentication methods, and the tokens they get."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any
from urllib.parse import quote_plus, unquote_plus

import httpx
import jwt
import pytest

from ews_listener_emulators._jwt import ASSERTION_TYPE, certificate_thumbprints
from ews_listener_emulators.token_server import TokenServer
from tests.token_server.conftest import (
    CERT_APP,
    SECRET,
    SECRET_APP,
    SPECIAL_SECRETS,
    TENANT,
    AppCert,
    make_cert,
)

SCOPE = "https://outlook.office365.com/.default"


def _basic(client_id: str, secret: str, *, encode: bool) -> str:
    if encode:
        client_id, secret = quote_plus(client_id), quote_plus(secret)
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def _assertion(
    cert: AppCert,
    aud: str,
    *,
    alg: str = "RS256",
    exp_in: float = 600,
    iss: str = CERT_APP,
    thumb_of: AppCert | None = None,
) -> str:
    sha1, sha256 = certificate_thumbprints((thumb_of or cert).cert)
    header = {"x5t": sha1} if alg == "RS256" else {"x5t#S256": sha256}
    now = time.time()
    claims = {
        "aud": aud,
        "iss": iss,
        "sub": iss,
        "jti": str(uuid.uuid4()),
        "nbf": int(now) - 5,
        "exp": int(now + exp_in),
    }
    return jwt.encode(claims, cert.key, algorithm=alg, headers=header)


def test_discovery_document_has_what_msal_reads(server: TokenServer, client: httpx.Client) -> None:
    """The v2.0 OpenID configuration names https endpoints under the tenant's GUID."""
    resp = client.get(f"{server.url}/{TENANT}/v2.0/.well-known/openid-configuration")
    assert resp.status_code == 200
    doc = resp.json()
    tid = str(uuid.uuid5(uuid.NAMESPACE_URL, "tenant:" + TENANT))
    assert doc["token_endpoint"] == f"{server.url}/{tid}/oauth2/v2.0/token"
    assert doc["token_endpoint"].startswith("https://")
    assert doc["authorization_endpoint"].endswith("/oauth2/v2.0/authorize")
    assert doc["issuer"] == f"{server.url}/{tid}/v2.0"
    keys = client.get(doc["jwks_uri"]).json()
    assert keys == server.jwks()
    assert client.get(f"{server.url}/common/discovery/keys").json() == keys


def test_discovery_of_unknown_tenant_is_aadsts90002(
    server: TokenServer, client: httpx.Client
) -> None:
    """An unknown tenant gets Entra's 400 with AADSTS90002."""
    resp = client.get(f"{server.url}/nowhere.example/v2.0/.well-known/openid-configuration")
    assert resp.status_code == 400
    assert resp.json()["error_codes"] == [90002]


def test_client_secret_post_gets_an_entra_v1_token(
    server: TokenServer, client: httpx.Client
) -> None:
    """client_secret_post returns Entra's success JSON with a verifiable app-only token."""
    resp = client.post(
        server.token_endpoint(TENANT),
        data={
            "grant_type": "client_credentials",
            "client_id": SECRET_APP,
            "client_secret": SECRET,
            "scope": SCOPE,
        },
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == body["ext_expires_in"] == 3600
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "RS256"
    assert header["kid"] == header["x5t"]
    claims = server.verify(body["access_token"])
    tid = claims["tid"]
    assert claims["iss"] == f"https://sts.windows.net/{tid}/"
    assert claims["aud"] == "https://outlook.office365.com"
    assert claims["appid"] == SECRET_APP
    assert claims["app_displayname"] == "Sales listener"
    assert claims["roles"] == ["full_access_as_app"]
    assert (claims["idtyp"], claims["ver"]) == ("app", "1.0")
    assert claims["exp"] - claims["iat"] == 3600
    assert server.requests[-1].auth_method == "client_secret_post"


@pytest.mark.parametrize("secret", SPECIAL_SECRETS)
@pytest.mark.parametrize("how", ["post", "basic-form", "basic-raw"])
def test_special_character_secrets(
    server: TokenServer, client: httpx.Client, secret: str, how: str
) -> None:
    """Secrets with reserved characters work by post, encoded Basic and raw Basic."""
    server.set_secret(TENANT, SECRET_APP, secret)
    data = {"grant_type": "client_credentials", "scope": SCOPE}
    headers = {}
    if how == "post":
        data |= {"client_id": SECRET_APP, "client_secret": secret}
    else:
        headers["Authorization"] = _basic(SECRET_APP, secret, encode=how == "basic-form")
    resp = client.post(server.token_endpoint(TENANT), data=data, headers=headers)
    assert resp.status_code == 200, resp.text
    record = server.requests[-1]
    # A raw secret that form-decodes to itself cannot be told apart from an encoded one.
    raw = "raw" if unquote_plus(secret) != secret else "form"
    expected = {"post": None, "basic-form": "form", "basic-raw": raw}[how]
    assert record.basic_encoding == expected
    assert record.auth_method == ("client_secret_post" if how == "post" else "client_secret_basic")


def test_secret_rotation(server: TokenServer, client: httpx.Client) -> None:
    """After set_secret the old secret is refused and the new one works."""
    server.set_secret(TENANT, SECRET_APP, "new-secret")
    form = {"grant_type": "client_credentials", "client_id": SECRET_APP, "scope": SCOPE}
    old = client.post(server.token_endpoint(TENANT), data=form | {"client_secret": SECRET})
    new = client.post(server.token_endpoint(TENANT), data=form | {"client_secret": "new-secret"})
    assert old.json()["error_codes"] == [7000215]
    assert new.status_code == 200


@pytest.mark.parametrize("alg", ["RS256", "PS256"])
def test_private_key_jwt_good(
    server: TokenServer, client: httpx.Client, app_cert: AppCert, alg: str
) -> None:
    """A client assertion signed by the registered certificate's key gets a token."""
    url = server.token_endpoint(TENANT)
    resp = client.post(
        url,
        data={
            "grant_type": "client_credentials",
            "client_id": CERT_APP,
            "scope": SCOPE,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": _assertion(app_cert, url, alg=alg),
        },
    )
    assert resp.status_code == 200, resp.text
    assert server.verify(resp.json()["access_token"])["appid"] == CERT_APP
    assert server.requests[-1].auth_method == "private_key_jwt"


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("wrong-key", 700027),
        ("wrong-thumbprint", 700027),
        ("wrong-aud", 700212),
        ("expired", 700024),
        ("wrong-iss", 700021),
    ],
)
def test_private_key_jwt_refused(
    server: TokenServer, client: httpx.Client, app_cert: AppCert, case: str, code: int
) -> None:
    """Bad assertions get 401 invalid_client with the matching AADSTS code."""
    url = server.token_endpoint(TENANT)
    other = make_cert("intruder")
    assertion = {
        "wrong-key": lambda: _assertion(other, url, thumb_of=app_cert),
        "wrong-thumbprint": lambda: _assertion(other, url),
        "wrong-aud": lambda: _assertion(app_cert, "https://login.example/token"),
        "expired": lambda: _assertion(app_cert, url, exp_in=-10),
        "wrong-iss": lambda: _assertion(app_cert, url, iss=SECRET_APP),
    }[case]()
    resp = client.post(
        url,
        data={
            "grant_type": "client_credentials",
            "client_id": CERT_APP,
            "scope": SCOPE,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
    )
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_client"
    assert resp.json()["error_codes"] == [code]


def test_domain_tenant_maps_to_a_stable_guid(ca: Any, client: httpx.Client) -> None:
    """A domain tenant gets the same GUID tid on every server; a GUID tenant keeps its own."""
    guid = str(uuid.uuid4())
    tids = []
    for _ in range(2):
        with TokenServer(ca=ca) as srv:
            srv.add_tenant(TENANT)
            srv.add_tenant(guid.upper())
            tids.append(srv.verify(srv.issue_token(TENANT, "x"))["tid"])
            assert srv.verify(srv.issue_token(guid, "x"))["tid"] == guid
    assert tids[0] == tids[1]
    assert str(uuid.UUID(tids[0])) == tids[0]


def test_scope_resource_sets_audience(server: TokenServer, client: httpx.Client) -> None:
    """The scope's resource becomes aud; verify() against the default audience then refuses."""
    resp = client.post(
        server.token_endpoint(TENANT),
        data={
            "grant_type": "client_credentials",
            "client_id": SECRET_APP,
            "client_secret": SECRET,
            "scope": "https://graph.microsoft.com/.default",
        },
    )
    token = resp.json()["access_token"]
    assert server.verify(token, audience="https://graph.microsoft.com")["aud"] == (
        "https://graph.microsoft.com"
    )


def test_generic_endpoint_is_rfc6749_shaped(server: TokenServer, client: httpx.Client) -> None:
    """/oauth2/token serves the first tenant's apps with plain RFC 6749 bodies."""
    ok = client.post(
        server.generic_token_endpoint(),
        data={"grant_type": "client_credentials"},
        headers={"Authorization": _basic(SECRET_APP, SECRET, encode=True)},
    )
    assert ok.status_code == 200, ok.text
    assert set(ok.json()) == {"access_token", "token_type", "expires_in"}
    assert server.verify(ok.json()["access_token"])["appid"] == SECRET_APP
    bad = client.post(
        server.generic_token_endpoint(),
        data={"grant_type": "client_credentials"},
        headers={"Authorization": _basic(SECRET_APP, "nope", encode=True)},
    )
    assert bad.status_code == 401
    assert bad.json()["error"] == "invalid_client"
    assert "error_codes" not in bad.json()
    assert bad.headers["WWW-Authenticate"].startswith("Basic")


def test_plain_http_when_no_ca() -> None:
    """ca=None serves plain http on loopback."""
    with TokenServer(ca=None) as srv:
        srv.add_tenant(TENANT)
        srv.register_app(TENANT, SECRET_APP, secret=SECRET)
        assert srv.url.startswith("http://127.0.0.1:")
        resp = httpx.post(
            srv.token_endpoint(TENANT),
            data={
                "grant_type": "client_credentials",
                "client_id": SECRET_APP,
                "client_secret": SECRET,
                "scope": SCOPE,
            },
            trust_env=False,
        )
        assert resp.status_code == 200


def test_secrets_and_tokens_stay_out_of_repr(server: TokenServer, client: httpx.Client) -> None:
    """Neither repr(server) nor its records show a secret or a token."""
    resp = client.post(
        server.token_endpoint(TENANT),
        data={
            "grant_type": "client_credentials",
            "client_id": SECRET_APP,
            "client_secret": SECRET,
            "scope": SCOPE,
        },
    )
    token = resp.json()["access_token"]
    text = repr(server) + repr(server.requests) + repr(server._apps)
    assert SECRET not in text
    assert token not in text
