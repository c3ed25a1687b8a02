"""AADSTS errors, verify(), revocation, fault injection, concurrency and msal as a real client."""

from __future__ import annotations

import base64
import ssl
import threading
from collections.abc import Iterator

import httpx
import msal
import pytest
import requests

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.token_server import TokenRejected, TokenServer
from tests.token_server.conftest import CERT_APP, SECRET, SECRET_APP, TENANT, AppCert

SCOPE = "https://outlook.office365.com/.default"
GOOD = {
    "grant_type": "client_credentials",
    "client_id": SECRET_APP,
    "client_secret": SECRET,
    "scope": SCOPE,
}


@pytest.mark.parametrize(
    ("change", "status", "error", "code"),
    [
        ({"client_id": "22222222-0000-0000-0000-000000000000"}, 400, "unauthorized_client", 700016),
        ({"client_secret": "wrong"}, 401, "invalid_client", 7000215),
        ({"client_secret": None}, 401, "invalid_client", 7000218),
        ({"grant_type": None}, 400, "invalid_request", 900144),
        ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
        ({"scope": None}, 400, "invalid_request", 900144),
        (
            {"scope": "https://outlook.office365.com/EWS.AccessAsUser.All"},
            400,
            "invalid_scope",
            70011,
        ),
        ({"scope": SCOPE + " https://graph.microsoft.com/.default"}, 400, "invalid_scope", 70011),
    ],
)
def test_aadsts_errors(
    server: TokenServer,
    client: httpx.Client,
    change: dict[str, str | None],
    status: int,
    error: str,
    code: int,
) -> None:
    """Each bad request gets Entra's status, error, code and body shape."""
    form = {k: v for k, v in (GOOD | change).items() if v is not None}
    resp = client.post(
        server.token_endpoint(TENANT), data=form, headers={"client-request-id": "cid-123"}
    )
    assert resp.status_code == status
    body = resp.json()
    assert (body["error"], body["error_codes"]) == (error, [code])
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    assert "Trace ID: " in body["error_description"]
    assert body["correlation_id"] == "cid-123"
    assert set(body) == {
        "error",
        "error_description",
        "error_codes",
        "timestamp",
        "trace_id",
        "correlation_id",
        "error_uri",
    }
    assert server.requests[-1].status == status


def test_unknown_client_and_secret_texts(server: TokenServer, client: httpx.Client) -> None:
    """The 700016 and 7000215 descriptions name the app and directory like Entra."""
    unknown = client.post(server.token_endpoint(TENANT), data=GOOD | {"client_id": "nope"})
    assert (
        f"Application with identifier 'nope' was not found in the directory '{TENANT}'"
    ) in unknown.json()["error_description"]
    wrong = client.post(server.token_endpoint(TENANT), data=GOOD | {"client_secret": "x"})
    assert f"for a secret added to app '{SECRET_APP}'." in wrong.json()["error_description"]


def test_expired_secret_and_unknown_tenant(server: TokenServer, client: httpx.Client) -> None:
    """An expired secret is AADSTS7000222; an unknown tenant is AADSTS90002."""
    server.register_app(TENANT, "old-app", secret="s", secret_expired=True)
    expired = client.post(
        server.token_endpoint(TENANT), data=GOOD | {"client_id": "old-app", "client_secret": "s"}
    )
    assert (expired.status_code, expired.json()["error_codes"]) == (401, [7000222])
    tenant = client.post(server.token_endpoint("fabrikam.example"), data=GOOD)
    assert (tenant.status_code, tenant.json()["error_codes"]) == (400, [90002])
    assert "Tenant 'fabrikam.example' not found." in tenant.json()["error_description"]


def test_basic_and_post_at_once_is_refused(server: TokenServer, client: httpx.Client) -> None:
    """Two client authentication methods in one request get 401 invalid_request."""
    basic = "Basic " + base64.b64encode(f"{SECRET_APP}:{SECRET}".encode()).decode()
    resp = client.post(server.token_endpoint(TENANT), data=GOOD, headers={"Authorization": basic})
    assert resp.status_code == 401
    assert resp.json()["error"] == "invalid_request"


def test_verify_accepts_good_and_rejects_bad(ca: EmulatorCA, server: TokenServer) -> None:
    """verify() sorts tokens into good, invalid_signature, invalid_token."""
    token = server.issue_token(TENANT, SECRET_APP, roles=["x"])
    assert server.verify(token)["roles"] == ["x"]
    head, payload, sig = token.split(".")
    forged = f"{head}.{payload}.{sig[:-4]}AAAA"
    with TokenServer(ca=None) as other:
        other.add_tenant(TENANT)
        foreign = other.issue_token(TENANT, SECRET_APP)
    cases = {forged: "invalid_signature", foreign: "invalid_signature", "garbage": "invalid_token"}
    for bad, category in cases.items():
        with pytest.raises(TokenRejected) as info:
            server.verify(bad)
        assert info.value.category == category
        assert bad not in str(info.value)
    with pytest.raises(TokenRejected) as wrong_aud:
        server.verify(token, audience="https://graph.microsoft.com")
    assert wrong_aud.value.category == "invalid_resource"  # Exchange Online's 2000003


def test_verify_expiry_follows_the_clock(ca: EmulatorCA) -> None:
    """A token is valid until exp by the server's clock, then token_expired."""
    now = [1_700_000_000.0]
    with TokenServer(ca=None, clock=lambda: now[0], token_lifetime=60) as srv:
        srv.add_tenant(TENANT)
        token = srv.issue_token(TENANT, SECRET_APP)
        now[0] += 59
        assert srv.verify(token)["exp"] == 1_700_000_060
        now[0] += 1
        with pytest.raises(TokenRejected) as info:
            srv.verify(token)
    assert info.value.category == "token_expired"


def test_revoke_one_app_or_all(server: TokenServer) -> None:
    """revoke(app) kills that app's tokens so far; revoke() kills all; new tokens work."""
    a = server.issue_token(TENANT, SECRET_APP)
    b = server.issue_token(TENANT, CERT_APP)
    server.revoke(SECRET_APP)
    with pytest.raises(TokenRejected) as info:
        server.verify(a)
    assert info.value.category == "invalid_token"
    assert server.verify(b)["appid"] == CERT_APP
    server.revoke()
    with pytest.raises(TokenRejected):
        server.verify(b)
    assert server.verify(server.issue_token(TENANT, SECRET_APP))["appid"] == SECRET_APP


def test_fail_next_then_recover(server: TokenServer, client: httpx.Client) -> None:
    """fail_next(2) answers two 5xx, then tokens flow again; all are counted."""
    server.fail_next(2, status=500)
    codes = [client.post(server.token_endpoint(TENANT), data=GOOD).status_code for _ in range(3)]
    assert codes == [500, 500, 200]
    assert server.request_count(SECRET_APP) == 3
    assert server.request_count("someone-else") == 0


def test_drop_next_closes_without_answer(server: TokenServer, client: httpx.Client) -> None:
    """drop_next() closes the connection; the client sees a protocol error."""
    server.drop_next()
    with pytest.raises(httpx.TransportError):
        client.post(server.token_endpoint(TENANT), data=GOOD)
    assert server.requests[-1].status == 0
    assert client.post(server.token_endpoint(TENANT), data=GOOD).status_code == 200


def test_answer_next_raw(server: TokenServer, client: httpx.Client) -> None:
    """answer_next_raw() sends exactly the given answer once."""
    server.answer_next_raw(200, b'{"token_type": "Bearer"}', "application/json")
    raw = client.post(server.token_endpoint(TENANT), data=GOOD)
    assert raw.json() == {"token_type": "Bearer"}
    assert "access_token" in client.post(server.token_endpoint(TENANT), data=GOOD).json()


def test_set_delay_slows_answers(server: TokenServer, tls: ssl.SSLContext) -> None:
    """With a delay longer than the client's timeout, the client times out."""
    server.set_delay(5)
    with (
        httpx.Client(verify=tls, trust_env=False, timeout=0.2) as slow,
        pytest.raises(httpx.ReadTimeout),
    ):
        slow.post(server.token_endpoint(TENANT), data=GOOD)
    server.set_delay(0)


def test_go_down_and_come_back_on_the_same_port(server: TokenServer, tls: ssl.SSLContext) -> None:
    """While down, connections are refused; after come_back the same URL answers."""
    url = server.token_endpoint(TENANT)
    server.go_down()
    with httpx.Client(verify=tls, trust_env=False, timeout=2) as c:
        with pytest.raises(httpx.ConnectError):
            c.post(url, data=GOOD)
        server.come_back()
        assert server.token_endpoint(TENANT) == url
        assert c.post(url, data=GOOD).status_code == 200


def test_many_concurrent_keep_alive_clients(server: TokenServer, tls: ssl.SSLContext) -> None:
    """Ten threads with keep-alive clients get 50 tokens, all counted."""
    results: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        with httpx.Client(verify=tls, trust_env=False, timeout=10) as c:
            for _ in range(5):
                code = c.post(server.token_endpoint(TENANT), data=GOOD).status_code
                with lock:
                    results.append(code)

    threads = [threading.Thread(target=work) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 50
    assert server.request_count() == 50


@pytest.fixture
def msal_http(ca: EmulatorCA) -> Iterator[requests.Session]:
    """A requests session trusting the emulator CA; trust_env=False beats REQUESTS_CA_BUNDLE."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca.ca_file)
    yield session
    session.close()


def test_msal_with_secret(server: TokenServer, msal_http: requests.Session) -> None:
    """msal's ConfidentialClientApplication gets a token with a client secret."""
    app = msal.ConfidentialClientApplication(
        SECRET_APP,
        client_credential=SECRET,
        authority=f"{server.url}/{TENANT}",
        instance_discovery=False,
        http_client=msal_http,
    )
    result = app.acquire_token_for_client(scopes=[SCOPE])
    assert "access_token" in result, result
    assert server.verify(result["access_token"])["appid"] == SECRET_APP


def test_msal_with_certificate(
    server: TokenServer, msal_http: requests.Session, app_cert: AppCert
) -> None:
    """msal signs a client assertion (PS256, x5t#S256) that the server accepts."""
    app = msal.ConfidentialClientApplication(
        CERT_APP,
        client_credential={
            "private_key": app_cert.key_pem.decode(),
            "public_certificate": app_cert.cert_pem.decode(),
        },
        authority=f"{server.url}/{TENANT}",
        instance_discovery=False,
        http_client=msal_http,
    )
    result = app.acquire_token_for_client(scopes=[SCOPE])
    assert "access_token" in result, result
    assert server.requests[-1].auth_method == "private_key_jwt"


def test_msal_reports_wrong_secret(server: TokenServer, msal_http: requests.Session) -> None:
    """msal surfaces AADSTS7000215 from the server unchanged."""
    app = msal.ConfidentialClientApplication(
        SECRET_APP,
        client_credential="wrong",
        authority=f"{server.url}/{TENANT}",
        instance_discovery=False,
        http_client=msal_http,
    )
    result = app.acquire_token_for_client(scopes=[SCOPE])
    assert result["error"] == "invalid_client"
    assert 7000215 in result["error_codes"]


def test_two_resources_in_one_request_are_refused_as_entra_does(
    server: TokenServer, client: httpx.Client
) -> None:
    """Graph's and Exchange Online's .default in one request: AADSTS70011 naming both scopes,
    without the "format is invalid" tail of a malformed scope (each one is well formed)."""
    scope = "https://graph.microsoft.com/.default " + SCOPE
    resp = client.post(server.token_endpoint(TENANT), data=GOOD | {"scope": scope})
    assert resp.status_code == 400
    body = resp.json()
    assert (body["error"], body["error_codes"]) == ("invalid_scope", [70011])
    description = body["error_description"]
    assert f"The scope {scope} is not valid." in description
    assert "format is invalid" not in description
    bad = client.post(server.token_endpoint(TENANT), data=GOOD | {"scope": "mail.read"})
    assert "format is invalid" in bad.json()["error_description"]
