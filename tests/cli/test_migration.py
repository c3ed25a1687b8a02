"""``ews-listener migration plan``: which mailboxes still use EWS on Exchange Online, and what
to change; ``credentials validate`` with one token per resource."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.token_server import TokenServer
from listener.cli import main
from listener.config import load_settings
from listener.errors import EXIT_CONFIG, EXIT_OK, EXIT_UNEXPECTED
from tests import REPO
from tests.auth.conftest import CLIENT_ID, SECRET, TENANT

MS = "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
EXO = "https://outlook.office365.com/.default"
GRAPH = "https://graph.microsoft.com/.default"


@pytest.fixture(autouse=True)
def _no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EWS_LISTENER_CONFIG", raising=False)


def write(tmp_path: Path, mailboxes: str, scopes: str = f'"{EXO}"') -> Path:
    path = tmp_path / "listener.toml"
    path.write_text(
        f"""
[credentials.sales]
client_id = "app"
token_endpoint = "{MS}"
scopes = {scopes}
auth_method = "body"
secret = {{ source = "inline", value = "hunter2-secret" }}

{mailboxes}

[handlers.log]
type = "log"
"""
    )
    return path


def mailbox(name: str, address: str, extra: str = "") -> str:
    return (
        f'[mailboxes.{name}]\naddress = "{address}"\ncredential = "sales"\n{extra}\n'
        'routes = [{ handlers = ["log"] }]\n'
    )


def plan(path: Path, capsys: pytest.CaptureFixture[str], *more: str) -> tuple[int, str]:
    code = main(["migration", "plan", "--config", str(path), "--today", "2026-12-01", *more])
    return code, capsys.readouterr().out


def test_exchange_online_ews_mailbox_must_move(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An EWS mailbox at Exchange Online: the lines to change, the days left, exit 1."""
    path = write(
        tmp_path,
        mailbox(
            "orders",
            "orders@contoso.com",
            'endpoint = "https://outlook.office365.com/EWS/Exchange.asmx"\n'
            'version = "Exchange2016"',
        ),
    )
    code, out = plan(path, capsys)
    assert code == EXIT_UNEXPECTED
    assert "orders (orders@contoso.com): ews at https://outlook.office365.com/EWS/" in out
    assert "Exchange Online over EWS: move to Microsoft Graph" in out
    lines = [line.strip() for line in out.splitlines()]
    start = lines.index("[mailboxes.orders]")
    assert lines[start : start + 7] == [
        "[mailboxes.orders]",
        '+ source = "graph"',
        '- endpoint = "https://outlook.office365.com/EWS/Exchange.asmx"',
        '- version = "Exchange2016"',
        "[credentials.sales]",
        f'- scopes = "{EXO}"',
        f'+ scopes = ["{EXO}", "{GRAPH}"]',
    ]
    assert "Mail.ReadWrite" in out
    assert "121 days left" in out
    assert "hunter2-secret" not in out


def test_the_fixed_lines_load_and_leave_nothing_to_move(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Applying the printed lines gives a valid configuration whose plan exits 0."""
    path = write(
        tmp_path,
        mailbox("orders", "orders@contoso.com", 'source = "graph"'),
        f'["{EXO}", "{GRAPH}"]',
    )
    assert load_settings(path, env={}).mailboxes["orders"].source == "graph"
    code, out = plan(path, capsys)
    assert code == EXIT_OK
    assert "Microsoft Graph: nothing to change" in out
    assert "Nothing left to move" in out


def test_on_premises_stays_on_ews(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On-premises Exchange keeps EWS: nothing to move, exit 0."""
    extra = 'endpoint = "https://mail.contoso.com/EWS/Exchange.asmx"'
    path = write(tmp_path, mailbox("onprem", "a@contoso.com", extra))
    code, out = plan(path, capsys)
    assert code == EXIT_OK
    assert "on-premises Exchange" in out
    assert "stays on EWS" in out


def test_national_cloud_gets_its_graph_endpoint_and_scope(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A US Government mailbox: that cloud's Graph endpoint and scope."""
    extra = 'endpoint = "https://outlook.office365.us/EWS/Exchange.asmx"'
    path = write(
        tmp_path, mailbox("gov", "a@agency.gov", extra), '"https://outlook.office365.us/.default"'
    )
    code, out = plan(path, capsys)
    assert code == EXIT_UNEXPECTED
    assert '+ endpoint = "https://graph.microsoft.us/v1.0"' in out
    assert "https://graph.microsoft.us/.default" in out


def test_credential_with_graph_scope_needs_no_scope_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Graph scope is suggested once per credential, and not when it is there already."""
    both = f'["{EXO}", "{GRAPH}"]'
    path = write(tmp_path, mailbox("a", "a@contoso.com") + mailbox("b", "b@contoso.com"), both)
    code, out = plan(path, capsys)
    assert code == EXIT_UNEXPECTED
    assert "[credentials.sales]" not in out
    assert "2 mailboxes still use EWS on Exchange Online:" in out
    single = write(tmp_path, mailbox("a", "a@contoso.com") + mailbox("b", "b@contoso.com"))
    _, out = plan(single, capsys)
    assert out.count("[credentials.sales]") == 1
    assert "added above serves this mailbox too" in out


@pytest.mark.parametrize(
    ("today", "left"), [("2026-06-01", "304 days left"), ("2027-05-01", "ended")]
)
def test_days_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], today: str, left: str
) -> None:
    """The deadline counts from --today; past it, the plan says EWS has ended."""
    path = write(tmp_path, mailbox("orders", "orders@contoso.com"))
    code = main(["migration", "plan", "--config", str(path), "--today", today])
    assert code == EXIT_UNEXPECTED
    assert left in capsys.readouterr().out


def test_invalid_configuration_is_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration that does not load is exit 78, as every command."""
    path = write(tmp_path, mailbox("orders", "orders@contoso.com", 'source = "graph"'))
    assert main(["migration", "plan", "--config", str(path)]) == EXIT_CONFIG
    assert "names no Graph resource" in capsys.readouterr().err


def test_help_states_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """--help says exit 0 when nothing is left to move, 1 otherwise."""
    assert main(["migration", "plan", "--help"]) == EXIT_OK
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "Exit 0 when nothing is left to move, 1 when some mailbox still has to move" in text


@pytest.mark.parametrize("path", sorted((REPO / "config").glob("*.toml")), ids=lambda p: p.name)
def test_every_config_example_loads(path: Path) -> None:
    """Every file in config/ is a valid configuration."""
    assert load_settings(path, env={}).mailboxes


# --- credentials validate: one token per resource ----------------------------------------------


@pytest.fixture
def tokens(ca: EmulatorCA) -> Iterator[TokenServer]:
    server = TokenServer(ca=ca)
    server.add_tenant(TENANT)
    server.register_app(TENANT, CLIENT_ID, secret=SECRET)
    server.start()
    yield server
    server.stop()


def validate_config(tmp_path: Path, server: TokenServer, ca: EmulatorCA, scopes: str) -> Path:
    path = tmp_path / "validate.toml"
    path.write_text(
        f"""
[credentials.sales]
client_id = "{CLIENT_ID}"
token_endpoint = "{server.token_endpoint(TENANT)}"
scopes = {scopes}
auth_method = "body"
ca_bundle = "{ca.ca_file}"
secret = {{ source = "inline", value = "{SECRET}" }}
"""
    )
    return path


def test_validate_requests_a_token_per_resource(
    tmp_path: Path, tokens: TokenServer, ca: EmulatorCA, capsys: pytest.CaptureFixture[str]
) -> None:
    """Graph and Exchange Online scopes: two requests, each token's audience and roles shown."""
    path = validate_config(tmp_path, tokens, ca, f'["{GRAPH}", "{EXO}"]')
    assert main(["credentials", "validate", "sales", "--config", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert [r.status for r in tokens.requests] == [200, 200]
    assert "requesting a token for https://graph.microsoft.com from" in out
    assert "requesting a token for https://outlook.office365.com from" in out
    assert "audience: https://graph.microsoft.com" in out
    assert "roles: Mail.ReadWrite" in out
    assert "roles: full_access_as_app" in out
    assert "warning" not in out


def test_validate_warns_without_mail_readwrite(
    tmp_path: Path, tokens: TokenServer, ca: EmulatorCA, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Graph token without Mail.ReadWrite gets the permission to add."""
    tokens.register_app(TENANT, CLIENT_ID, secret=SECRET, graph_roles=("Mail.Read",))
    path = validate_config(tmp_path, tokens, ca, f'"{GRAPH}"')
    assert main(["credentials", "validate", "sales", "--config", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "warning: no 'Mail.ReadWrite' role" in out
    assert "full_access_as_app" not in out


def test_validate_fails_when_one_resource_fails(
    tmp_path: Path, tokens: TokenServer, ca: EmulatorCA, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every resource is tried; one refused token makes the exit code 1."""
    path = validate_config(tmp_path, tokens, ca, f'["{GRAPH}", "api://nowhere/x"]')
    assert main(["credentials", "validate", "sales", "--config", str(path)]) == EXIT_UNEXPECTED
    out = capsys.readouterr().out
    assert "audience: https://graph.microsoft.com" in out
    assert "FAILED" in out
