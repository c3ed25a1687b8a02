"""Plain http is accepted only for hosts that are loopback by address, or ``localhost`` itself."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from listener.config import ConfigError, load_settings
from listener.handlers.config import is_loopback_host as handler_is_loopback
from listener.secrets._base import is_loopback_host

TEMPLATE = """
[credentials.sales]
client_id = "app-1"
token_endpoint = "{token}"
scopes = "https://outlook.office365.com/.default"
secret = {{ source = "inline", value = "hunter2-secret" }}

[mailboxes.orders]
address = "orders@contoso.com"
credential = "sales"
routes = [{{ handlers = ["hook"] }}]

[handlers.hook]
type = "webhook"
url = "{hook}"
"""

SAFE = "https://login.example.com/t/oauth2/v2.0/token"
NOT_LOOPBACK = [
    "127.attacker.example",
    "127.0.0.1.nip.io",
    "localhost.attacker.example",
    "evil.localhost",
    "128.0.0.1",
    "::2",
    "0.0.0.0",
]
LOOPBACK = ["127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "::1", "[::1]", "::ffff:127.0.0.1"]


def _load(tmp_path: Path, *, token: str = SAFE, hook: str = "https://hooks.example/x") -> None:
    path = tmp_path / "listener.toml"
    path.write_text(dedent(TEMPLATE.format(token=token, hook=hook)))
    load_settings(path, env={})


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_a_name_that_merely_starts_with_127_is_not_loopback(host: str) -> None:
    """Names are never judged by their first characters; only addresses and 'localhost'."""
    assert not is_loopback_host(host)
    assert not handler_is_loopback(host)


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_addresses_and_localhost_are_loopback(host: str) -> None:
    """127.0.0.0/8, ::1 (bracketed or not) and the name localhost are loopback."""
    assert is_loopback_host(host)


def test_plain_http_token_endpoint_on_a_127_prefixed_name_is_refused(tmp_path: Path) -> None:
    """``http://127.attacker.example/token`` would send the client secret in clear: refused."""
    with pytest.raises(ConfigError, match=r"credentials\.sales\.token_endpoint.*must use https"):
        _load(tmp_path, token="http://127.attacker.example/token")


def test_plain_http_webhook_on_a_127_prefixed_name_is_refused(tmp_path: Path) -> None:
    """The webhook URL check uses the same rule as the token endpoint."""
    with pytest.raises(ConfigError, match=r"handlers\.hook\.url.*must use https"):
        _load(tmp_path, hook="http://127.attacker.example/hook")


def test_plain_http_to_a_loopback_address_is_still_accepted(tmp_path: Path) -> None:
    """Local emulators and test receivers keep working."""
    _load(tmp_path, token="http://127.0.0.1:8080/token", hook="http://[::1]:9000/hook")
