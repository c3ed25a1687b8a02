"""Token providers against the emulator's HTTPS token server: methods, errors, retries, TLS."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import certifi
import pytest

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.token_server import TokenServer
from listener.auth import (
    CachingTokenProvider,
    MsalClient,
    OAuth2Client,
    RetryPolicy,
    TokenProviders,
    basic_authorization,
    build_provider,
    decode_claims,
    hint_for,
)
from listener.errors import TokenError
from tests.auth.conftest import CLIENT_ID, KEY_PASSWORD, SECRET, TENANT, credential

SPECIAL = ["a+b%2Fc:d=", "jhyun/ku[ojubbj]/jhgfdrg^7*dfg&jkiu#bjshdm,ktttdg"]
FAST = RetryPolicy(attempts=3, initial_delay=0.0, max_delay=0.0)


def provider(cfg: object, **kw: object) -> CachingTokenProvider:
    return build_provider("sales", cfg, retry=FAST, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("secret", SPECIAL)
@pytest.mark.parametrize(("method", "client"), [("basic", OAuth2Client), ("body", MsalClient)])
def test_special_secrets_under_both_methods(
    tokens: TokenServer, ca: EmulatorCA, secret: str, method: str, client: type
) -> None:
    """Secrets with URL-special characters work with Basic (RFC 6749 form encoding) and body."""
    tokens.register_app(TENANT, CLIENT_ID, secret=secret)
    p = provider(credential(tokens, ca, secret=secret, auth_method=method))
    assert isinstance(p.client, client)
    claims = decode_claims(p.get_token().token)
    assert claims is not None
    assert claims["roles"] == ["full_access_as_app"]
    expected = "client_secret_basic" if method == "basic" else "client_secret_post"
    assert tokens.requests[-1].auth_method == expected
    if method == "basic":
        assert tokens.requests[-1].basic_encoding == "form"


def test_basic_raw_encoding(tokens: TokenServer, ca: EmulatorCA) -> None:
    """basic_encoding = raw sends id and secret without form encoding."""
    tokens.register_app(TENANT, CLIENT_ID, secret=SPECIAL[0])
    p = provider(credential(tokens, ca, secret=SPECIAL[0], basic_encoding="raw"))
    assert p.get_token().token
    assert tokens.requests[-1].basic_encoding == "raw"


def test_basic_authorization_encodings() -> None:
    """Form encoding quotes id and secret before Base64; raw does not."""
    form = base64.b64decode(basic_authorization("id x", "a+b:c", "form")[6:]).decode()
    raw = base64.b64decode(basic_authorization("id x", "a+b:c", "raw")[6:]).decode()
    assert form == "id+x:a%2Bb%3Ac"
    assert raw == "id x:a+b:c"


def test_certificate_through_msal(
    tokens: TokenServer, ca: EmulatorCA, certificate: tuple[Path, Path, bytes]
) -> None:
    """A certificate credential gets a token with private_key_jwt."""
    key, cert, pem = certificate
    tokens.register_app(TENANT, CLIENT_ID, certificate_pem=pem)
    cfg = credential(
        tokens,
        ca,
        secret=None,
        certificate={
            "private_key": str(key),
            "certificate": str(cert),
            "password": {"source": "inline", "value": KEY_PASSWORD},
        },
    )
    p = provider(cfg)
    assert isinstance(p.client, MsalClient)
    assert p.get_token().token
    assert tokens.requests[-1].auth_method == "private_key_jwt"


@pytest.mark.parametrize("method", ["basic", "body"])
def test_generic_endpoint(tokens: TokenServer, ca: EmulatorCA, method: str) -> None:
    """A non-Microsoft-shaped endpoint uses the RFC 6749 client for both methods."""
    cfg = credential(tokens, ca, token_endpoint=tokens.generic_token_endpoint(), auth_method=method)
    p = provider(cfg)
    assert isinstance(p.client, OAuth2Client)
    assert p.get_token().token


@pytest.mark.parametrize("method", ["basic", "body"])
def test_wrong_secret_keeps_server_error_and_hint(
    tokens: TokenServer, ca: EmulatorCA, method: str
) -> None:
    """A wrong secret raises TokenError with error, AADSTS code and hint, never the secret."""
    p = provider(credential(tokens, ca, secret="wrong-" + SECRET, auth_method=method))
    with pytest.raises(TokenError) as info:
        p.get_token()
    error = info.value
    assert (error.error, error.aadsts) == ("invalid_client", "7000215")
    assert "VALUE" in str(error)
    assert "wrong-" not in str(error) + repr(error) + (error.error_description or "")
    assert p.requests == 1  # not transient: no retry


@pytest.mark.parametrize(
    ("change", "code"),
    [("client", "700016"), ("tenant", "90002"), ("scope", "70011")],
)
@pytest.mark.parametrize("method", ["basic", "body"])
def test_entra_errors_have_hints(
    tokens: TokenServer, ca: EmulatorCA, change: str, code: str, method: str
) -> None:
    """Unknown client, unknown tenant and a bad scope give their AADSTS code and a hint."""
    overrides: dict[str, object] = {"auth_method": method}
    if change == "client":
        overrides["client_id"] = "22222222-0000-0000-0000-000000000000"
    elif change == "tenant":
        overrides["token_endpoint"] = tokens.token_endpoint("nope.onmicrosoft.com")
    else:
        overrides["scopes"] = "https://outlook.office365.com/Mail.Read"
    with pytest.raises(TokenError) as info:
        provider(credential(tokens, ca, **overrides)).get_token()
    assert info.value.aadsts == code
    assert hint_for(code) is not None
    assert hint_for(code) in str(info.value)


@pytest.mark.parametrize("method", ["basic", "body"])
def test_retries_on_5xx_then_succeeds(tokens: TokenServer, ca: EmulatorCA, method: str) -> None:
    """Two 503 answers are retried; the third request succeeds."""
    p = provider(credential(tokens, ca, auth_method=method))
    tokens.fail_next(2, status=503)
    assert p.get_token().token
    assert p.requests == 3


@pytest.mark.parametrize("method", ["basic", "body"])
def test_retries_are_bounded(tokens: TokenServer, ca: EmulatorCA, method: str) -> None:
    """Persistent 5xx gives a transient TokenError after the configured attempts."""
    p = provider(credential(tokens, ca, auth_method=method))
    tokens.fail_next(10, status=500)
    with pytest.raises(TokenError) as info:
        p.get_token()
    assert info.value.transient
    assert p.requests == 3


def test_backoff_delays_grow() -> None:
    """Back-off delays grow by the multiplier up to the maximum."""
    policy = RetryPolicy(attempts=5, initial_delay=1, max_delay=3, multiplier=2)
    assert [policy.delay(n) for n in (1, 2, 3)] == [1, 2, 3]


def test_retry_sleeps_the_policy_delay(tokens: TokenServer, ca: EmulatorCA) -> None:
    """The provider sleeps the policy's delays between attempts (injected sleep)."""
    slept: list[float] = []
    p = build_provider(
        "s",
        credential(tokens, ca),
        retry=RetryPolicy(attempts=3, initial_delay=0.25, multiplier=2),
        sleep=slept.append,
    )
    tokens.fail_next(2, status=502)
    p.get_token()
    assert slept == [0.25, 0.5]


@pytest.mark.parametrize("method", ["basic", "body"])
def test_dropped_connection_is_retried(tokens: TokenServer, ca: EmulatorCA, method: str) -> None:
    """A connection dropped without an answer is a transient error, retried."""
    p = provider(credential(tokens, ca, auth_method=method))
    tokens.drop_next(1)
    assert p.get_token().token
    assert p.requests == 2


@pytest.mark.parametrize("method", ["basic", "body"])
def test_unreachable_endpoint(tokens: TokenServer, ca: EmulatorCA, method: str) -> None:
    """A token endpoint that refuses connections gives a clear transient error."""
    cfg = credential(tokens, ca, auth_method=method)
    tokens.go_down()
    with pytest.raises(TokenError, match="cannot reach") as info:
        provider(cfg).get_token()
    assert info.value.transient


@pytest.mark.parametrize("method", ["basic", "body"])
def test_tls_failure(
    tokens: TokenServer, tmp_path_factory: pytest.TempPathFactory, method: str
) -> None:
    """A certificate not signed by ca_bundle fails with a TLS message naming ca_bundle."""
    other = EmulatorCA(tmp_path_factory.mktemp("other-ca"))
    with pytest.raises(TokenError, match="ca_bundle") as info:
        provider(credential(tokens, other, auth_method=method)).get_token()
    assert "TLS" in str(info.value)
    assert not info.value.transient


@pytest.mark.parametrize("method", ["basic", "body"])
def test_ca_bundle_survives_requests_ca_bundle(
    tokens: TokenServer, ca: EmulatorCA, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE pointing elsewhere do not override ca_bundle."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("CURL_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    assert provider(credential(tokens, ca, auth_method=method)).get_token().token


@pytest.mark.parametrize("method", ["basic", "body"])
def test_non_json_answer(tokens: TokenServer, ca: EmulatorCA, method: str) -> None:
    """An HTML answer is reported as not JSON."""
    tokens.answer_next_raw(200, b"<html>login</html>", "text/html")
    with pytest.raises(TokenError) as info:
        provider(credential(tokens, ca, auth_method=method)).get_token()
    assert "JSON" in str(info.value) or "json" in str(info.value).lower()


@pytest.mark.parametrize("method", ["basic", "body"])
def test_json_without_access_token(tokens: TokenServer, ca: EmulatorCA, method: str) -> None:
    """A JSON answer without access_token is an error."""
    tokens.answer_next_raw(200, b'{"token_type": "Bearer", "expires_in": 3599}', "application/json")
    with pytest.raises(TokenError):
        provider(credential(tokens, ca, auth_method=method)).get_token()


@pytest.mark.parametrize("method", ["basic", "body"])
def test_timeout(tokens: TokenServer, ca: EmulatorCA, method: str) -> None:
    """A slow endpoint times out after ``timeout`` seconds, as a transient error."""
    tokens.set_delay(2)
    p = build_provider(
        "s", credential(tokens, ca, auth_method=method, timeout=0.2), retry=RetryPolicy(attempts=1)
    )
    with pytest.raises(TokenError) as info:
        p.get_token()
    tokens.set_delay(0)
    assert info.value.transient


@pytest.mark.parametrize("method", ["basic", "body"])
def test_invalid_client_rereads_rotated_secret(
    tokens: TokenServer, ca: EmulatorCA, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After invalid_client the secret is re-read once; a rotated secret then succeeds."""
    monkeypatch.setenv("T_ROTATING_SECRET", SECRET)
    cfg = credential(tokens, ca, auth_method=method).model_copy(update={"secret": None})
    from listener.secrets import EnvSecret

    cfg = cfg.model_copy(update={"secret": EnvSecret(source="env", name="T_ROTATING_SECRET")})
    p = provider(cfg)
    assert p.get_token().token
    tokens.set_secret(TENANT, CLIENT_ID, "rotated-" + SECRET)
    monkeypatch.setenv("T_ROTATING_SECRET", "rotated-" + SECRET)
    assert p.get_token(force_refresh=True).token
    assert p.requests == 3  # first token, refused with the old secret, accepted with the new


def test_invalid_client_without_rotation_fails_once(tokens: TokenServer, ca: EmulatorCA) -> None:
    """When the re-read secret is unchanged there is no pointless second request."""
    p = provider(credential(tokens, ca, secret="not-the-registered-secret"))
    with pytest.raises(TokenError):
        p.get_token()
    assert tokens.request_count(CLIENT_ID) == 1


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.mark.parametrize("method", ["basic", "body"])
def test_cache_and_renewal_margin(tokens: TokenServer, ca: EmulatorCA, method: str) -> None:
    """A cached token is reused until renew_before seconds before expiry, then renewed."""
    clock = Clock()
    p = provider(credential(tokens, ca, auth_method=method), clock=clock, renew_before=300)
    first = p.get_token()
    clock.now += timedelta(seconds=3600 - 301)
    assert p.get_token() is first
    clock.now += timedelta(seconds=2)
    second = p.get_token()
    assert second is not first
    assert tokens.request_count(CLIENT_ID) == 2


def test_force_refresh_and_invalidate(tokens: TokenServer, ca: EmulatorCA) -> None:
    """force_refresh asks the server; invalidate drops the cached token."""
    p = provider(credential(tokens, ca))
    first = p.get_token()
    second = p.get_token(force_refresh=True)
    assert second.token != first.token
    p.invalidate(first.token)  # not the cached one: ignored
    assert p.get_token() is second
    p.invalidate(second.token)
    assert p.get_token() is not second
    assert tokens.request_count(CLIENT_ID) == 3


def test_registry_shares_one_provider_per_credential(tokens: TokenServer, ca: EmulatorCA) -> None:
    """TokenProviders builds one provider per credential name and names unknown ones."""
    providers = TokenProviders({"sales": credential(tokens, ca)})
    assert providers.get("sales") is providers.get("sales")
    assert "sales" in providers
    with pytest.raises(KeyError, match="sales"):
        providers.get("support")
    providers.close()


def test_hint_table() -> None:
    """The hint table covers the common setup mistakes."""
    assert "VALUE" in (hint_for("7000215") or "")
    assert "not registered" in (hint_for("AADSTS700016") or "")
    assert "tenant" in (hint_for(90002) or "")
    assert ".default" in (hint_for("70011") or "")
    assert "expired" in (hint_for("7000222") or "")
    assert hint_for("1") is None
