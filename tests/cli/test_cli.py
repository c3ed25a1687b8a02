"""The command line: check-config and credentials validate, through ``main([...])``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.token_server import TokenServer
from listener.cli import main
from listener.errors import EXIT_CONFIG, EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE
from tests import REPO
from tests.auth.conftest import CLIENT_ID, KEY_PASSWORD, SCOPE, SECRET, TENANT

EXAMPLE = Path(__file__).parents[2] / "config" / "example.toml"


@pytest.fixture
def tokens(ca: EmulatorCA) -> Iterator[TokenServer]:
    """A token server whose app accepts ``SECRET``."""
    server = TokenServer(ca=ca)
    server.add_tenant(TENANT)
    server.register_app(TENANT, CLIENT_ID, secret=SECRET)
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EWS_LISTENER_CONFIG", raising=False)


def config_for(tmp_path: Path, server: TokenServer, ca: EmulatorCA, body: str) -> Path:
    path = tmp_path / "listener.toml"
    path.write_text(
        f"""
[credentials.sales]
client_id = "{CLIENT_ID}"
token_endpoint = "{server.token_endpoint(TENANT)}"
scopes = "{SCOPE}"
ca_bundle = "{ca.ca_file}"
{body}
"""
    )
    return path


def test_check_config_example_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """check-config on config/example.toml exits 0 and masks the inline secret."""
    assert main(["check-config", "--config", str(EXAMPLE)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "Configuration OK" in out
    assert "change-me" not in out
    assert "inline:**********" in out


def test_check_config_reads_env_config(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --config, EWS_LISTENER_CONFIG names the file."""
    monkeypatch.setenv("EWS_LISTENER_CONFIG", str(EXAMPLE))
    assert main(["check-config"]) == EXIT_OK
    assert str(EXAMPLE) in capsys.readouterr().out


def test_check_config_five_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file with five different mistakes prints all five and exits 78."""
    path = tmp_path / "bad.toml"
    path.write_text(
        """
[credentials.sales]
client_id = ""
token_endpoint = "http://login.example.com/t/oauth2/v2.0/token"
scopes = []
auth_method = "digest"
secret = { source = "keychain", value = "hunter2-top-secret" }

[mailboxes.orders]
address = "orders@contoso.com"
credential = "sales"
routes = [{ handlers = ["audit"] }]

[handlers.audit]
type = "log"
"""
    )
    assert main(["--config", str(path), "check-config"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    for location in ("client_id", "token_endpoint", "scopes", "auth_method", "secret"):
        assert f"{path}: credentials.sales.{location}:" in err
    assert "5 configuration problems" in err
    assert "hunter2" not in err


def test_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file exits 78 with a clear message."""
    assert main(["check-config", "--config", str(tmp_path / "none.toml")]) == EXIT_CONFIG
    assert "does not exist" in capsys.readouterr().err


def test_no_configuration_at_all(capsys: pytest.CaptureFixture[str]) -> None:
    """Neither --config nor EWS_LISTENER_CONFIG: exit 78 saying how to give one."""
    assert main(["check-config"]) == EXIT_CONFIG
    assert "--config" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the version and exits 0."""
    assert main(["--version"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("ews-listener ")


def test_usage_error_exits_64(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command is a usage error (64)."""
    assert main(["frobnicate"]) == EXIT_USAGE


@pytest.mark.parametrize("method", ["basic", "body"])
def test_validate_with_secret(
    tmp_path: Path,
    tokens: TokenServer,
    ca: EmulatorCA,
    method: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """credentials validate succeeds with basic and body, printing expiry and roles."""
    body = f'auth_method = "{method}"\nsecret = {{ source = "env", name = "T_CLI_SECRET" }}'
    path = config_for(tmp_path, tokens, ca, body)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("T_CLI_SECRET", SECRET)
        assert main(["credentials", "validate", "sales", "--config", str(path)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "OK: Bearer token valid until" in out
    assert "roles: full_access_as_app" in out
    assert "audience: https://outlook.office365.com" in out
    assert SECRET not in out


def test_validate_with_certificate(
    tmp_path: Path,
    tokens: TokenServer,
    ca: EmulatorCA,
    certificate: tuple[Path, Path, bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """credentials validate succeeds with a certificate (msal, private_key_jwt)."""
    key, cert, pem = certificate
    tokens.register_app(TENANT, CLIENT_ID, certificate_pem=pem)
    body = (
        f'[credentials.sales.certificate]\nprivate_key = "{key}"\ncertificate = "{cert}"\n'
        f'password = {{ source = "inline", value = "{KEY_PASSWORD}" }}'
    )
    path = config_for(tmp_path, tokens, ca, body)
    assert main(["credentials", "validate", "sales", "--config", str(path)]) == EXIT_OK
    assert "roles: full_access_as_app" in capsys.readouterr().out
    assert tokens.requests[-1].auth_method == "private_key_jwt"


def test_validate_is_never_cached(
    tmp_path: Path,
    tokens: TokenServer,
    ca: EmulatorCA,
) -> None:
    """Each validate requests a fresh token."""
    path = config_for(tmp_path, tokens, ca, f'secret = {{ source = "inline", value = "{SECRET}" }}')
    for _ in range(2):
        assert main(["credentials", "validate", "sales", "--config", str(path)]) == EXIT_OK
    assert tokens.request_count(CLIENT_ID) == 2


@pytest.mark.parametrize("method", ["basic", "body"])
def test_validate_wrong_secret_prints_hint(
    tmp_path: Path,
    tokens: TokenServer,
    ca: EmulatorCA,
    method: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A wrong secret exits 1 with the AADSTS code and the hint, never the secret."""
    body = f'auth_method = "{method}"\nsecret = {{ source = "inline", value = "not-{SECRET}" }}'
    path = config_for(tmp_path, tokens, ca, body)
    assert main(["credentials", "validate", "sales", "--config", str(path)]) == EXIT_UNEXPECTED
    out = capsys.readouterr().out
    assert "AADSTS code: 7000215" in out
    assert "hint: the client secret is wrong or expired" in out
    assert f"not-{SECRET}" not in out


def test_validate_unreadable_secret(
    tmp_path: Path,
    tokens: TokenServer,
    ca: EmulatorCA,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A secret that cannot be read exits 1 naming its source."""
    body = 'secret = { source = "env", name = "T_CLI_SECRET_MISSING" }'
    path = config_for(tmp_path, tokens, ca, body)
    assert main(["credentials", "validate", "sales", "--config", str(path)]) == EXIT_UNEXPECTED
    assert "T_CLI_SECRET_MISSING is not set" in capsys.readouterr().out


def test_validate_unknown_credential(
    tmp_path: Path,
    tokens: TokenServer,
    ca: EmulatorCA,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unknown credential name lists the defined ones and exits 78."""
    path = config_for(tmp_path, tokens, ca, f'secret = {{ source = "inline", value = "{SECRET}" }}')
    assert main(["credentials", "validate", "hr", "--config", str(path)]) == EXIT_CONFIG
    assert "defined: sales" in capsys.readouterr().err


def test_validate_unreachable(
    tmp_path: Path,
    tokens: TokenServer,
    ca: EmulatorCA,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unreachable token endpoint exits 1 saying so."""
    path = config_for(tmp_path, tokens, ca, f'secret = {{ source = "inline", value = "{SECRET}" }}')
    tokens.go_down()
    code = main(["credentials", "validate", "sales", "--attempts", "1", "--config", str(path)])
    assert code == EXIT_UNEXPECTED
    assert "cannot reach" in capsys.readouterr().out


def test_cli_modules_import_in_one_direction() -> None:
    """The CLI package imports one way: _main → command modules → _common, never back."""
    import ast

    package = REPO / "listener" / "cli"
    commands = {p.stem for p in package.glob("*.py")} - {"__init__", "_main", "_common"}
    assert {"service", "dead_letters", "demo"} <= commands
    for path in package.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("listener.cli"):
                tail = (node.module or "").removeprefix("listener.cli").lstrip(".")
                imported |= {tail} if tail else {a.name for a in node.names}
        if path.stem == "_common":
            assert not imported, f"_common imports {imported}"
        elif path.stem in commands:
            # One lazy, documented exception: credentials validate --mailbox reuses mailbox test.
            allowed = {"_common"} | ({"mailbox"} if path.stem == "credentials" else set())
            assert imported <= allowed, f"{path.name} imports {imported - allowed}"
