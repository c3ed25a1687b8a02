"""Tokens per (credential, resource) against the emulator's token server: one app registration
serving EWS and Graph mailboxes, each with a token for its own resource."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.token_server import TokenServer
from listener.auth import RetryPolicy, TokenProviders, decode_claims
from listener.auth.resources import ResourceMismatch
from listener.config import MailboxConfig
from listener.daemon import _first_unavailable
from listener.errors import TokenError
from listener.secrets import EnvSecret
from tests.auth.conftest import CLIENT_ID, SECRET, TENANT, credential

GRAPH = "https://graph.microsoft.com/.default"
EXO = "https://outlook.office365.com/.default"
FAST = RetryPolicy(attempts=3, initial_delay=0.0, max_delay=0.0)


def mailbox(source: str, **extra: str) -> MailboxConfig:
    return MailboxConfig.model_validate(
        {
            "address": "orders@contoso.com",
            "credential": "app",
            "source": source,
            "routes": [{"handlers": ["log"]}],
            **extra,
        }
    )


def both(tokens: TokenServer, ca: EmulatorCA, method: str = "body") -> TokenProviders:
    cfg = credential(tokens, ca, scopes=f"{GRAPH} {EXO}", auth_method=method)
    return TokenProviders({"app": cfg}, retry=FAST)


@pytest.mark.parametrize("method", ["basic", "body"])
def test_one_credential_two_resources(tokens: TokenServer, ca: EmulatorCA, method: str) -> None:
    """A Graph and an EWS mailbox of one credential get a token each, for their own audience."""
    providers = both(tokens, ca, method)
    graph = providers.for_mailbox(mailbox("graph"))
    ews = providers.for_mailbox(mailbox("ews"))
    assert graph is not ews
    graph_claims = decode_claims(graph.get_token().token)
    ews_claims = decode_claims(ews.get_token().token)
    assert graph_claims is not None
    assert ews_claims is not None
    assert graph_claims["aud"] == "https://graph.microsoft.com"
    assert graph_claims["roles"] == ["Mail.ReadWrite"]
    assert ews_claims["aud"] == "https://outlook.office365.com"
    assert ews_claims["roles"] == ["full_access_as_app"]
    assert [r.status for r in tokens.requests] == [200, 200]
    assert (graph.resource, ews.resource) == (
        "https://graph.microsoft.com",
        "https://outlook.office365.com",
    )
    providers.close()


def test_all_scopes_at_once_are_refused(tokens: TokenServer, ca: EmulatorCA) -> None:
    """get(name) still asks with every scope, which Entra (and the emulator) refuse: AADSTS70011."""
    providers = both(tokens, ca)
    with pytest.raises(TokenError) as info:
        providers.get("app").get_token()
    assert info.value.aadsts == "70011"
    providers.close()


def test_providers_are_shared_per_pair(tokens: TokenServer, ca: EmulatorCA) -> None:
    """Same pair, same provider; get(name, resource) is for_mailbox's provider."""
    providers = both(tokens, ca)
    graph = providers.for_mailbox(mailbox("graph"))
    assert providers.for_mailbox(mailbox("graph", folder="Orders")) is graph
    assert providers.get("app", "https://graph.microsoft.com/") is graph
    assert providers.for_source("app", "https://outlook.office365.com/EWS/Exchange.asmx") is (
        providers.for_mailbox(mailbox("ews"))
    )
    with pytest.raises(KeyError, match="no scope for the resource"):
        providers.get("app", "https://contoso.sharepoint.com")
    providers.close()


def test_plain_credential_unchanged(tokens: TokenServer, ca: EmulatorCA) -> None:
    """A credential naming no Graph resource: for_mailbox is get(name), every scope as before."""
    providers = TokenProviders({"app": credential(tokens, ca)}, retry=FAST)
    provider = providers.for_mailbox(mailbox("ews"))
    assert provider is providers.get("app")
    assert provider.client.scopes == (EXO,)  # type: ignore[attr-defined]
    with pytest.raises(ResourceMismatch, match="names no Graph resource"):
        providers.for_mailbox(mailbox("graph"))
    providers.close()


def test_single_flight_per_pair(tokens: TokenServer, ca: EmulatorCA) -> None:
    """Each pair caches its token: many calls, one request per resource."""
    providers = both(tokens, ca)
    for _ in range(5):
        providers.for_mailbox(mailbox("graph")).get_token()
        providers.for_mailbox(mailbox("ews")).get_token()
    assert tokens.request_count(CLIENT_ID) == 2
    providers.close()


def test_metrics_keep_the_credential_and_logs_name_the_resource(
    tokens: TokenServer, ca: EmulatorCA
) -> None:
    """on_request gets the credential name (set after providers exist); log lines the resource."""
    providers = both(tokens, ca)
    graph = providers.for_mailbox(mailbox("graph"))
    seen: list[tuple[str, bool]] = []
    providers.on_request = lambda name, ok: seen.append((name, ok))
    with capture_logs() as logs:
        graph.get_token()
        providers.for_mailbox(mailbox("ews")).get_token()
    assert seen == [("app", True), ("app", True)]
    acquired = [e for e in logs if e["event"] == "token.acquired"]
    assert [e["resource"] for e in acquired] == [
        "https://graph.microsoft.com",
        "https://outlook.office365.com",
    ]
    assert {e["credential"] for e in acquired} == {"app"}
    providers.close()


@pytest.mark.parametrize("method", ["basic", "body"])
def test_secret_rotation_reaches_every_resource(
    tokens: TokenServer, ca: EmulatorCA, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a rotation each pair re-reads the secret once and recovers, though the first pair
    to notice already refreshed the shared secret source."""
    monkeypatch.setenv("T_ROTATING_SECRET", SECRET)
    cfg = credential(tokens, ca, scopes=f"{GRAPH} {EXO}", auth_method=method).model_copy(
        update={"secret": EnvSecret(source="env", name="T_ROTATING_SECRET")}
    )
    providers = TokenProviders({"app": cfg}, retry=FAST)
    graph = providers.for_mailbox(mailbox("graph"))
    ews = providers.for_mailbox(mailbox("ews"))
    graph.get_token()
    ews.get_token()
    tokens.set_secret(TENANT, CLIENT_ID, "rotated-" + SECRET)
    monkeypatch.setenv("T_ROTATING_SECRET", "rotated-" + SECRET)
    assert graph.get_token(force_refresh=True).token
    assert ews.get_token(force_refresh=True).token
    # Graph: first, refused with the old secret, accepted with the new. EWS: the RFC 6749 client
    # reads the shared secret source Graph's provider re-read and sends the new one at once;
    # msal's application holds the secret it was built with, is refused once and re-reads.
    assert graph.requests == 3
    assert ews.requests == (2 if method == "basic" else 3)
    providers.close()


def test_fail_fast_check_asks_per_resource(tokens: TokenServer, ca: EmulatorCA) -> None:
    """run --fail-fast's token check asks once per (credential, resource) the mailboxes use."""
    providers = both(tokens, ca)
    mailboxes = {"a": mailbox("graph"), "b": mailbox("ews"), "c": mailbox("ews", folder="x")}
    app = SimpleNamespace(settings=SimpleNamespace(mailboxes=mailboxes), providers=providers)
    assert _first_unavailable(app) is None  # type: ignore[arg-type]
    assert [r.status for r in tokens.requests] == [200, 200]
    providers.close()
