"""No secret and no access token in any log line (DEBUG, ours and the libraries'), exception
text or repr, through the token and secret scenarios."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import TypeAdapter

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.token_server import TokenServer
from listener.auth import RetryPolicy, build_provider
from listener.cli import main
from listener.config import ConfigError, CredentialConfig, load_settings
from listener.secrets import SecretSpec
from tests.auth.conftest import CLIENT_ID, KEY_PASSWORD, SCOPE, TENANT, credential

SECRETS = ["a+b%2Fc:d=", "jhyun/ku[ojubbj]/jhgfdrg^7*dfg&jkiu#bjshdm,ktttdg", KEY_PASSWORD]
WRONG = "wrong/secret+value=="
FAST = RetryPolicy(attempts=3, initial_delay=0.0)


class Evidence:
    """Everything a person or a log shipper could see."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.tokens: list[str] = []
        self.events: list[Any] = []  # structlog events, filled live by capture_logs

    def error(self, exc: BaseException) -> None:
        self.texts.append(str(exc))
        self.texts.append(repr(exc))
        self.texts.append("".join(traceback.format_exception(exc)))
        for attribute in ("error_description", "error"):
            value = getattr(exc, attribute, None)
            if isinstance(value, str):
                self.texts.append(value)

    def attempt(self, action: Callable[[], Any]) -> Any:
        try:
            result = action()
        except Exception as exc:
            self.error(exc)
            return None
        self.texts.append(repr(result))
        token = getattr(result, "token", None)
        if isinstance(token, str):
            self.tokens.append(token)
        return result


@pytest.fixture
def evidence(caplog: pytest.LogCaptureFixture) -> Iterator[Evidence]:
    """Collects stdlib logs at DEBUG (msal, httpx, httpcore, azure, hvac) and structlog events."""
    found = Evidence()
    caplog.set_level(logging.DEBUG)
    for name in ("msal", "httpx", "httpcore", "azure", "urllib3", "hvac", "listener"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        found.events = events
        yield found


def assert_clean(found: Evidence) -> None:
    """No secret and no token issued in anything collected."""
    assert found.tokens, "the scenarios should have produced tokens"
    assert found.events, "structlog events should have been captured"
    blob = "\n".join([*found.texts, *map(repr, found.events)])
    for secret in [*SECRETS, WRONG]:
        assert secret not in blob, f"secret leaked: {secret[:3]}…"
    for token in found.tokens:
        assert token not in blob, "access token leaked"
        assert token.split(".")[2] not in blob, "access token signature leaked"


def test_no_secret_or_token_anywhere(
    evidence: Evidence,
    tokens: TokenServer,
    ca: EmulatorCA,
    certificate: tuple[Path, Path, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every scenario's logs, exceptions and reprs are free of secrets and tokens."""
    key, cert, pem = certificate
    for index, secret in enumerate(SECRETS[:2]):
        client_id = f"app-{index}"
        tokens.register_app(TENANT, client_id, secret=secret)
        for method in ("basic", "body"):
            config = credential(tokens, ca, secret=secret, auth_method=method, client_id=client_id)
            evidence.texts.append(repr(config))
            evidence.texts.append(config.model_dump_json())
            provider = build_provider("sales", config, retry=FAST)
            evidence.texts.append(repr(provider))
            evidence.texts.append(repr(provider.client))
            evidence.attempt(provider.get_token)  # success
            tokens.fail_next(1, status=503)
            evidence.attempt(lambda p=provider: p.get_token(force_refresh=True))  # retried
            tokens.answer_next_raw(200, b"<html>nope</html>", "text/html")
            evidence.attempt(lambda p=provider: p.get_token(force_refresh=True))
            wrong = credential(tokens, ca, secret=WRONG, auth_method=method, client_id=client_id)
            evidence.attempt(build_provider("sales", wrong, retry=FAST).get_token)

    # Certificate with an encrypted key.
    tokens.register_app(TENANT, "cert-app", certificate_pem=pem)
    cert_config = credential(
        tokens,
        ca,
        secret=None,
        client_id="cert-app",
        certificate={
            "private_key": str(key),
            "certificate": str(cert),
            "password": {"source": "inline", "value": KEY_PASSWORD},
        },
    )
    evidence.texts.append(repr(cert_config))
    evidence.attempt(build_provider("hr", cert_config, retry=FAST).get_token)

    # Rotation: invalid_client, re-read, retry.
    monkeypatch.setenv("T_LEAK_SECRET", SECRETS[0])
    tokens.register_app(TENANT, CLIENT_ID, secret=SECRETS[0])
    env_config = CredentialConfig.model_validate(
        {
            "client_id": CLIENT_ID,
            "token_endpoint": tokens.token_endpoint(TENANT),
            "scopes": SCOPE,
            "secret": {"source": "env", "name": "T_LEAK_SECRET"},
            "ca_bundle": str(ca.ca_file),
        }
    )
    rotating = build_provider("sales", env_config, retry=FAST)
    evidence.attempt(rotating.get_token)
    tokens.set_secret(TENANT, CLIENT_ID, SECRETS[1])
    monkeypatch.setenv("T_LEAK_SECRET", SECRETS[1])
    evidence.attempt(lambda: rotating.get_token(force_refresh=True))

    # Secret specs and configuration errors.
    spec = TypeAdapter(SecretSpec).validate_python({"source": "inline", "value": SECRETS[1]})
    evidence.texts += [repr(spec), str(spec), spec.describe(), repr(spec.read())]
    bad = tmp_path / "bad.toml"
    bad.write_text(
        f'[credentials.x]\nclient_id = ""\nsecret = {{ source = "inline", value = "{SECRETS[0]}",'
        f' bogus = "{SECRETS[1]}" }}\n'
    )
    try:
        load_settings(bad, env={})
    except ConfigError as exc:
        evidence.error(exc)

    # The CLI, success and failure.
    path = tmp_path / "ok.toml"
    path.write_text(
        f'[credentials.sales]\nclient_id = "{CLIENT_ID}"\n'
        f'token_endpoint = "{tokens.token_endpoint(TENANT)}"\nscopes = "{SCOPE}"\n'
        f'ca_bundle = "{ca.ca_file}"\nsecret = {{ source = "env", name = "T_LEAK_SECRET" }}\n'
    )
    main(["credentials", "validate", "sales", "--config", str(path)])
    monkeypatch.setenv("T_LEAK_SECRET", WRONG)
    main(["credentials", "validate", "sales", "--config", str(path)])
    main(["check-config", "--config", str(path)])
    captured = capsys.readouterr()
    evidence.texts += [captured.out, captured.err]

    # Not vacuous: the libraries' DEBUG lines were captured (and are checked by the fixture too).
    names = {record.name.split(".")[0] for record in caplog.records}
    assert {"msal", "httpx", "listener"} <= names
    for record in caplog.records:
        evidence.texts += [record.getMessage(), repr(record.args), record.exc_text or ""]
    assert_clean(evidence)
