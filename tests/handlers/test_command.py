"""The command handler with real subprocesses: stdin, environment, exit codes, timeouts."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from listener.errors import PermanentError, TransientError
from listener.handlers import CommandHandler, HandlerPermanentError, HandlerTransientError
from tests.handlers.conftest import FakeLoader, MakeMessage, ends_within

PY = sys.executable

RECORD = """
import json, os, sys
out = sys.argv[1]
event = json.loads(sys.stdin.read())
mime_file = os.environ.get("EWS_LISTENER_MIME_FILE")
record = {
    "event": event,
    "key": os.environ["EWS_LISTENER_IDEMPOTENCY_KEY"],
    "mime_file": mime_file,
    "mime": open(mime_file, "rb").read().decode() if mime_file else None,
    "extra": os.environ.get("EXTRA"),
    "home": os.environ.get("HOME"),
    "cwd": os.getcwd(),
}
open(out, "w").write(json.dumps(record))
"""


def test_success_gets_event_mime_file_and_key(
    tmp_path: Path, make_message: MakeMessage, loader: FakeLoader
) -> None:
    """Exit 0: the program read the JSON event, the MIME file and the key; the file is gone."""
    out = tmp_path / "record.json"
    message = make_message()
    handler = CommandHandler(
        "cmd", [PY, "-c", RECORD, str(out)], env={"EXTRA": "yes"}, cwd=tmp_path
    )
    handler(message)
    record = json.loads(out.read_text())
    assert record["event"]["idempotency_key"] == message.idempotency_key
    assert record["event"]["subject"] == "Order 42"
    assert record["key"] == message.idempotency_key
    assert record["mime"] == loader.mime.decode()
    assert record["extra"] == "yes"
    assert Path(record["cwd"]) == tmp_path
    assert not Path(record["mime_file"]).exists()


def test_pass_mime_false_does_not_fetch(
    tmp_path: Path, make_message: MakeMessage, loader: FakeLoader
) -> None:
    """With ``pass_mime = false`` the MIME is not loaded and no file path is given."""
    out = tmp_path / "record.json"
    CommandHandler("cmd", [PY, "-c", RECORD, str(out)], pass_mime=False)(make_message())
    assert json.loads(out.read_text())["mime_file"] is None
    assert loader.mime_calls == 0


def test_env_is_passed_and_home_comes_from_the_listener(
    tmp_path: Path, make_message: MakeMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``env`` reaches the program; HOME is one of the few variables always passed on."""
    monkeypatch.setenv("HOME", "/home/listener")
    out = tmp_path / "record.json"
    handler = CommandHandler("cmd", [PY, "-c", RECORD, str(out)], env={"EXTRA": "1"})
    handler(make_message())
    record = json.loads(out.read_text())
    assert record["home"] == "/home/listener"
    assert record["extra"] == "1"


@pytest.mark.parametrize(
    ("code", "error"),
    [(75, HandlerTransientError), (1, HandlerPermanentError), (2, HandlerPermanentError)],
)
def test_exit_codes(code: int, error: type[Exception], make_message: MakeMessage) -> None:
    """75 is transient, any other non-zero exit permanent; the stderr tail is in the error."""
    script = f"import sys; sys.stderr.write('x' * 5000 + 'the reason'); sys.exit({code})"
    with pytest.raises(error, match="the reason") as info:
        CommandHandler("cmd", [PY, "-c", script], pass_mime=False)(make_message())
    assert len(str(info.value)) < 2200  # a tail, not the whole output
    assert isinstance(info.value, TransientError if code == 75 else PermanentError)


def test_missing_program_is_permanent(make_message: MakeMessage) -> None:
    """A program that does not exist cannot start: permanent, naming the program."""
    with pytest.raises(HandlerPermanentError, match="no-such-program"):
        CommandHandler("cmd", ["/nonexistent/no-such-program"], pass_mime=False)(make_message())


def test_killed_by_a_signal_is_transient(make_message: MakeMessage) -> None:
    """A program killed by someone else (OOM killer, shutdown) is retried."""
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(HandlerTransientError, match="signal 9"):
        CommandHandler("cmd", [PY, "-c", script], pass_mime=False)(make_message())


def test_mime_failure_runs_nothing(
    tmp_path: Path, make_message: MakeMessage, loader: FakeLoader
) -> None:
    """When the MIME cannot be loaded the program does not run and the error propagates."""
    loader.fail = ConnectionError("EWS is down")
    out = tmp_path / "record.json"
    with pytest.raises(ConnectionError):
        CommandHandler("cmd", [PY, "-c", RECORD, str(out)])(make_message())
    assert not out.exists()


# The grandchild inherits an ignored SIGTERM in "stubborn" mode (ignored signals survive exec).
SPAWN = {
    "polite": 'sleep 120 & echo $! > "$0"; wait',
    "stubborn": 'trap "" TERM; sleep 120 & echo $! > "$0"; wait',
}


@pytest.mark.parametrize("mode", ["polite", "stubborn"])
def test_timeout_kills_the_whole_process_group(
    tmp_path: Path, make_message: MakeMessage, mode: str
) -> None:
    """On timeout the program and its grandchildren die (SIGTERM, then SIGKILL); transient."""
    pid_file = tmp_path / "grandchild.pid"
    handler = CommandHandler(
        "cmd",
        ["sh", "-c", SPAWN[mode], str(pid_file)],
        timeout=1.0,
        kill_grace=0.2,
        pass_mime=False,
    )
    started = time.monotonic()
    with pytest.raises(HandlerTransientError, match="timed out"):
        handler(make_message())
    assert time.monotonic() - started < 30
    grandchild = int(pid_file.read_text())
    assert ends_within(grandchild, 10)


def test_argv_must_not_be_empty() -> None:
    """An empty argv is refused at construction."""
    with pytest.raises(ValueError, match="argv"):
        CommandHandler("cmd", [])


def test_environment_has_the_message_identifiers(tmp_path: Path, make_message: MakeMessage) -> None:
    """The program can tell mailbox, item and handler apart without parsing the JSON."""
    out = tmp_path / "env.json"
    script = (
        "import json, os, sys; json.dump({k: v for k, v in os.environ.items() "
        "if k.startswith('EWS_LISTENER_')}, open(sys.argv[1], 'w'))"
    )
    message = make_message()
    CommandHandler("mine", [PY, "-c", script, str(out)], pass_mime=False)(message)
    env = json.loads(out.read_text())
    assert env == {
        "EWS_LISTENER_HANDLER": "mine",
        "EWS_LISTENER_MAILBOX": "orders@example.com",
        "EWS_LISTENER_ITEM_ID": "AAMkItem1",
        "EWS_LISTENER_IDEMPOTENCY_KEY": message.idempotency_key,
    }
    assert os.environ.get("EWS_LISTENER_HANDLER") is None
