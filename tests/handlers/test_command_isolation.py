"""What a command handler's program may see and leave behind: a minimal environment, no secrets,
no background processes after the run (issue 11, points 6 and 12)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from textwrap import dedent

import pytest

from listener.config import ConfigError, load_settings
from listener.handlers import CommandHandler, build_handler
from listener.observability.redaction import forget_secrets, redact
from tests.handlers.conftest import MakeMessage, ends_within

PY = sys.executable
DUMP_ENV = "import json, os, sys; open(sys.argv[1], 'w').write(json.dumps(dict(os.environ)))"


def _config(tmp_path: Path, inherit: str, *, extra: str = "") -> Path:
    path = tmp_path / "listener.toml"
    path.write_text(
        dedent(
            f"""
            [credentials.sales]
            client_id = "app-1"
            token_endpoint = "https://login.microsoftonline.com/t/oauth2/v2.0/token"
            scopes = "https://outlook.office365.com/.default"
            secret = {{ source = "env", name = "SALES_CLIENT_SECRET" }}

            [mailboxes.orders]
            address = "orders@contoso.com"
            credential = "sales"
            routes = [{{ handlers = ["run"] }}]

            [handlers.run]
            type = "command"
            argv = ["true"]
            inherit_env = {inherit}
            {extra}
            """
        )
    )
    return path


def test_child_environment_holds_no_listener_secret(
    tmp_path: Path, make_message: MakeMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The program gets PATH, LANG, HOME, TZ, inherit_env and env; never the rest (secrets)."""
    monkeypatch.setenv("SALES_CLIENT_SECRET", "s3cret-from-env-source")
    monkeypatch.setenv("EWS_LISTENER_CREDENTIALS__SALES__SECRET__VALUE", "inline-override")
    monkeypatch.setenv("WANTED", "w")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("TZ", "Europe/Berlin")
    out = tmp_path / "env.json"
    handler = CommandHandler(
        "cmd",
        [PY, "-c", DUMP_ENV, str(out)],
        env={"EXTRA": "x"},
        inherit_env=["WANTED"],
        pass_mime=False,
    )
    handler(make_message())
    env = json.loads(out.read_text())
    own = {k for k in env if k.startswith("EWS_LISTENER_")}
    assert own == {
        "EWS_LISTENER_HANDLER",
        "EWS_LISTENER_MAILBOX",
        "EWS_LISTENER_ITEM_ID",
        "EWS_LISTENER_IDEMPOTENCY_KEY",
    }
    assert set(env) - own <= {"PATH", "LANG", "HOME", "TZ", "WANTED", "EXTRA"}
    assert (env["WANTED"], env["EXTRA"], env["TZ"]) == ("w", "x", "Europe/Berlin")
    assert "s3cret-from-env-source" not in json.dumps(env)


def test_inherit_env_naming_a_secret_source_variable_is_refused_at_load(tmp_path: Path) -> None:
    """Naming the variable an ``env`` secret source reads is a config error: file, field, value."""
    path = _config(tmp_path, '["PYTHONPATH", "SALES_CLIENT_SECRET"]')
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    text = str(info.value)
    assert str(path) in text
    assert "handlers.run.inherit_env.1" in text
    assert "'SALES_CLIENT_SECRET'" in text
    assert "credentials.sales.secret" in text


@pytest.mark.parametrize(
    ("inherit", "message"),
    [
        ('["CREDENTIALS_DIRECTORY"]', "credentials.sales.secret"),
        ('["EWS_LISTENER_CONFIG"]', "listener's own configuration"),
        ("true", "must be a list"),
    ],
)
def test_inherit_env_refuses_other_secret_carriers(
    tmp_path: Path, inherit: str, message: str
) -> None:
    """The systemd credentials directory, the listener's own variables, and 'everything'."""
    extra = ""
    if inherit == '["CREDENTIALS_DIRECTORY"]':
        extra = 'secret = { source = "file", credential = "hook-key" }'
        path = _config(tmp_path, "[]")
        text = path.read_text().replace(
            'secret = { source = "env", name = "SALES_CLIENT_SECRET" }', extra
        )
        path.write_text(text.replace("inherit_env = []", f"inherit_env = {inherit}"))
    else:
        path = _config(tmp_path, inherit)
    with pytest.raises(ConfigError, match=message):
        load_settings(path, env={})


def test_inherit_env_list_is_accepted_and_reaches_the_handler(tmp_path: Path) -> None:
    """A harmless list loads, and the built handler carries it."""
    settings = load_settings(_config(tmp_path, '["PYTHONPATH"]'), env={})
    handler = build_handler("run", settings.handlers["run"])
    assert isinstance(handler, CommandHandler)
    assert handler.inherit_env == ("PYTHONPATH",)


def test_command_env_values_are_masked_in_logs() -> None:
    """A command handler's ``env`` values are registered secrets once the handler is built."""
    forget_secrets()
    try:
        CommandHandler("cmd", ["true"], env={"API_KEY": "tok-8842-abcdef"})
        assert "tok-8842-abcdef" not in redact("calling with tok-8842-abcdef")
    finally:
        forget_secrets()


def test_background_children_end_with_the_run(tmp_path: Path, make_message: MakeMessage) -> None:
    """A program that exits 0 leaving a background child: the child is gone when we return."""
    pid_file = tmp_path / "bg.pid"
    script = 'sleep 300 & echo $! > "$1"'
    handler = CommandHandler(
        "cmd", ["sh", "-c", script, "sh", str(pid_file)], kill_grace=2.0, pass_mime=False
    )
    handler(make_message())
    background = int(pid_file.read_text())
    assert ends_within(background, 5)


def test_background_children_ignoring_sigterm_are_killed(
    tmp_path: Path, make_message: MakeMessage
) -> None:
    """A background child that ignores SIGTERM gets SIGKILL after kill_grace."""
    pid_file = tmp_path / "bg.pid"
    script = """(trap '' TERM; while :; do sleep 0.05; done) & echo $! > "$1"; exit 3"""
    handler = CommandHandler(
        "cmd", ["sh", "-c", script, "sh", str(pid_file)], kill_grace=0.3, pass_mime=False
    )
    with pytest.raises(Exception, match="exited with 3"):
        handler(make_message())
    background = int(pid_file.read_text())
    assert ends_within(background, 5)
