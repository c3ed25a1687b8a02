"""Every line the CLI prints is masked in its one output function (issue 11, point 7).

``check-config`` showed URL user-info and query values (``http://user:P4ss@…``,
``?code=FUNCTIONKEY``); ``once --json`` and ``dead-letters show`` printed error texts raw.
"""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from listener.cli._common import echo
from listener.cli._main import main
from listener.observability.redaction import forget_secrets, register_secret

CONFIG = """
[credentials.sales]
client_id = "app-1"
token_endpoint = "https://user:P4ss@login.example.com/t/oauth2/v2.0/token?code=FUNCTIONKEY"
scopes = "https://outlook.office365.com/.default"
secret = {{ source = "inline", value = "hunter2-secret" }}

[mailboxes.orders]
address = "orders@contoso.com"
credential = "sales"
endpoint = "https://ews:W0rd@mail.contoso.com/EWS/Exchange.asmx?key=ENDPOINTKEY"
routes = [{{ handlers = ["hook"] }}]

[handlers.hook]
type = "webhook"
url = "{hook}"
"""
LEAKS = ("P4ss", "W0rd", "FUNCTIONKEY", "ENDPOINTKEY", "HOOKKEY", "hunter2-secret")


def _run(tmp_path: Path, hook: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "listener.toml"
    path.write_text(dedent(CONFIG.format(hook=hook)))
    code = main(["check-config", "--config", str(path)])
    out, err = capsys.readouterr()
    return code, out + err


def test_check_config_summary_masks_url_userinfo_and_query_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary still names the hosts, never a password or a key in a query."""
    code, text = _run(tmp_path, "https://hooks.example/in?code=HOOKKEY", capsys)
    assert code == 0, text
    assert "login.example.com" in text
    for leak in LEAKS:
        assert leak not in text, text


def test_check_config_errors_mask_url_userinfo_and_query_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused webhook URL is quoted in the error without its user-info or query values."""
    code, text = _run(tmp_path, "http://user:HOOKKEY@hooks.example/in?code=HOOKKEY", capsys)
    assert code != 0
    assert "handlers.hook.url" in text
    for leak in LEAKS:
        assert leak not in text, text


def test_cli_output_masks_registered_secrets_and_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    """Error texts (``once --json``, ``dead-letters show``) print through the same mask."""
    register_secret("vault-read-s3cret")
    try:
        echo('{"error": "stderr: Authorization: Bearer abc.def-123 and vault-read-s3cret"}')
        echo("dead letter 7: curl -H 'Authorization: Basic dXNlcjpwYXNz'", err=True)
    finally:
        forget_secrets()
    out, err = capsys.readouterr()
    for leak in ("abc.def-123", "vault-read-s3cret", "dXNlcjpwYXNz"):
        assert leak not in out + err
    assert "dead letter 7" in err


def test_cli_prose_about_bearer_tokens_is_not_masked(capsys: pytest.CaptureFixture[str]) -> None:
    """``credentials validate`` prints "OK: Bearer token valid until …": a word, not a token."""
    echo("OK: Bearer token valid until 2026-01-01T00:00:00Z")
    assert capsys.readouterr().out.startswith("OK: Bearer token valid until")
