"""Python handlers (dotted path, entry point, factory), the log handler, build_handlers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from pydantic import TypeAdapter, ValidationError

from listener.handlers import (
    CommandHandler,
    DirectoryHandler,
    HandlerConfig,
    HandlerConfigError,
    LogHandler,
    PythonHandler,
    WebhookHandler,
    build_handler,
    build_handlers,
)
from tests.handlers import sample_targets
from tests.handlers.conftest import MakeMessage

ADAPTER: TypeAdapter[HandlerConfig] = TypeAdapter(HandlerConfig)


def config(**data: Any) -> HandlerConfig:
    return ADAPTER.validate_python(data)


@pytest.fixture(autouse=True)
def _clean() -> None:
    sample_targets.CALLS.clear()
    sample_targets.INSTANCES.clear()


def test_dotted_path_function(make_message: MakeMessage) -> None:
    """``target = "module:function"`` calls the function with the message."""
    handler = build_handler(
        "p", config(type="python", target="tests.handlers.sample_targets:record")
    )
    message = make_message()
    handler(message)
    assert sample_targets.CALLS[:] == [("record", message.idempotency_key)]
    assert handler.name == "p"


def test_coroutine_function_is_awaited(make_message: MakeMessage) -> None:
    """An ``async def`` handler runs to completion."""
    target = "tests.handlers.sample_targets:record_async"
    build_handler("p", config(type="python", target=target))(make_message())
    assert sample_targets.CALLS[0][0] == "async"


def test_factory_with_options_and_close(make_message: MakeMessage) -> None:
    """With ``options`` the target is a factory; the product's exceptions and close go through."""
    target = "tests.handlers.sample_targets:make_recorder"
    handler = build_handler("p", config(type="python", target=target, options={"prefix": "crm"}))
    handler(make_message())
    handler.close()
    handler.close()
    assert sample_targets.CALLS[0][0] == "crm"
    assert sample_targets.INSTANCES[0].closed == 1  # closed once
    failing = build_handler(
        "q", config(type="python", target=target, options={"prefix": "x", "fail": True})
    )
    with pytest.raises(RuntimeError, match="x failed"):
        failing(make_message())


def test_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_message: MakeMessage
) -> None:
    """A handler registered in the ``ews_listener.handlers`` group is found by name."""
    dist = tmp_path / "acme_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[ews_listener.handlers]\nacme = tests.handlers.sample_targets:make_recorder\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    handler = build_handler(
        "acme", config(type="python", entry_point="acme", options={"prefix": "plugin"})
    )
    handler(make_message())
    assert sample_targets.CALLS[0][0] == "plugin"
    with pytest.raises(
        HandlerConfigError, match=r"handlers\.x\.entry_point: no entry point 'nope'.*acme"
    ):
        build_handler("x", config(type="python", entry_point="nope"))


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"target": "tests.handlers.no_such_module:f"}, "handlers.h.target: cannot load"),
        ({"target": "tests.handlers.sample_targets:missing"}, "handlers.h.target: cannot load"),
        ({"target": "tests.handlers.sample_targets:not_callable"}, "is not callable"),
        (
            {"target": "tests.handlers.sample_targets:broken_factory", "options": {"a": 1}},
            "handlers.h.options: the factory",
        ),
        (
            {"target": "tests.handlers.sample_targets:not_callable", "options": {}},
            "callable factory",
        ),
    ],
)
def test_python_build_errors_name_the_field(data: dict[str, Any], fragment: str) -> None:
    """Import and factory failures become HandlerConfigError naming handler and field."""
    with pytest.raises(HandlerConfigError, match=fragment.replace(".", r"\.")):
        build_handler("h", config(type="python", **data))


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"type": "python"}, "exactly one of 'target' or 'entry_point'"),
        ({"type": "python", "target": "a:b", "entry_point": "c"}, "exactly one"),
        ({"type": "python", "target": "no colon"}, "package.module:function"),
        ({"type": "python", "target": "a.b:c", "extra": 1}, "extra"),
        ({"type": "command", "argv": []}, "argv"),
        ({"type": "command", "argv": ["x"], "timeout": -1}, "timeout"),
        ({"type": "command", "argv": ["x"], "env": {"A=B": "1"}}, "environment variable name"),
        ({"type": "directory"}, "path"),
        ({"type": "log", "level": "loud"}, "level"),
        ({"type": "smoke-signal"}, "does not match any of the expected tags"),
    ],
)
def test_invalid_handler_configs(data: dict[str, Any], fragment: str) -> None:
    """Each invalid table is refused with a message naming the problem."""
    with pytest.raises(ValidationError) as info:
        ADAPTER.validate_python(data)
    assert fragment in str(info.value)


def test_configs_are_frozen() -> None:
    """Handler configurations cannot be changed after load."""
    c = config(type="log")
    with pytest.raises(ValidationError):
        c.level = "error"  # type: ignore[union-attr,misc]


def test_command_env_values_are_hidden_in_repr() -> None:
    """Environment values (often API keys) never show in the config's repr."""
    c = config(type="command", argv=["x"], env={"API_KEY": "k-123"})
    assert "k-123" not in repr(c)


def test_build_handlers_builds_each_type(tmp_path: Path) -> None:
    """Every built-in type is built under its name and satisfies the Handler protocol."""
    handlers = build_handlers(
        {
            "py": config(type="python", target="tests.handlers.sample_targets:record"),
            "hook": config(type="webhook", url="http://127.0.0.1:9/x"),
            "cmd": config(type="command", argv=["true"]),
            "dir": config(type="directory", path=str(tmp_path)),
            "log": config(type="log"),
        }
    )
    kinds = {name: type(h) for name, h in handlers.items()}
    assert kinds == {
        "py": PythonHandler,
        "hook": WebhookHandler,
        "cmd": CommandHandler,
        "dir": DirectoryHandler,
        "log": LogHandler,
    }
    assert all(h.name == n for n, h in handlers.items())
    for h in handlers.values():
        h.close()


def test_build_handlers_closes_what_it_built_on_failure() -> None:
    """When one handler cannot be built, the ones before it are closed."""
    target = "tests.handlers.sample_targets:make_recorder"
    with pytest.raises(HandlerConfigError):
        build_handlers(
            {
                "ok": config(type="python", target=target, options={"prefix": "a"}),
                "bad": config(type="python", target="tests.handlers.sample_targets:missing"),
            }
        )
    assert sample_targets.INSTANCES[0].closed == 1


def test_log_handler_writes_one_line(make_message: MakeMessage) -> None:
    """The log handler emits one event with mailbox, subject, from and key at its level."""
    message = make_message()
    with structlog.testing.capture_logs() as logs:
        LogHandler("log", level="warning")(message)
    assert len(logs) == 1
    line = logs[0]
    assert line["event"] == "message.handled"
    assert line["log_level"] == "warning"
    assert line["mailbox"] == "orders@example.com"
    assert line["subject"] == "Order 42"
    assert line["from"] == "alice@example.net"
    assert line["key"] == message.idempotency_key
