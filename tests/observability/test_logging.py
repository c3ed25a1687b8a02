"""configure_logging(): one chain for structlog and stdlib records, redaction last."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable

import pytest
import structlog

from listener.observability.logging import configure_logging, get_logger
from listener.observability.redaction import register_secret

Configure = Callable[..., io.StringIO]

SECRET = "Q~8aF3-secret-VALUE.x1"
# An access token never registered anywhere: only its JWT shape can catch it.
JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL291dGxvb2sifQ.U2lnbmF0dXJl"


def _lines(buffer: io.StringIO) -> list[str]:
    return [line for line in buffer.getvalue().splitlines() if line.strip()]


def _log_in_five_places(log: structlog.stdlib.BoundLogger, value: str) -> None:
    log.info("field", detail=f"the value is {value}")
    log.info("nested", request={"body": {"form": [f"x {value} y"]}})
    try:
        raise RuntimeError(f"token endpoint said no to {value}")
    except RuntimeError:
        log.exception("exception")
    log.warning("url", url=f"https://login.example/token?client_secret={value}&x=1")
    log.warning("header", headers={"Authorization": f"Bearer {value}", "Accept": "*/*"})


@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("registered", [True, False], ids=["registered", "jwt"])
def test_one_secret_in_five_places_is_masked_everywhere(
    configured: Configure, fmt: str, registered: bool
) -> None:
    """A secret in a field, nested dict, exception, URL query and header never reaches output."""
    value = SECRET if registered else JWT
    if registered:
        register_secret(SECRET)
    buffer = configured(fmt=fmt)
    _log_in_five_places(get_logger("listener.test"), value)
    output = buffer.getvalue()
    lines = _lines(buffer)
    for event in ("field", "nested", "exception", "url", "header"):
        assert any(event in line for line in lines), event
    assert "Traceback" in output
    assert value not in output
    assert value[:12] not in output
    assert output.count("***") >= 5


def test_json_lines_carry_context_and_utc_timestamps(configured: Configure) -> None:
    """Each JSON line has mailbox, credential, poll_id from contextvars and an ISO UTC time."""
    buffer = configured(fmt="json")
    log = get_logger("listener.poller")
    with structlog.contextvars.bound_contextvars(mailbox="sales", credential="c1", poll_id="p42"):
        log.info("poll.started", page=1)
        logging.getLogger("exchangelib.services").warning("server busy")
    log.info("after")
    records = [json.loads(line) for line in _lines(buffer)]
    assert [r["event"] for r in records] == ["poll.started", "server busy", "after"]
    for record in records[:2]:
        assert (record["mailbox"], record["credential"], record["poll_id"]) == (
            "sales",
            "c1",
            "p42",
        )
    assert "mailbox" not in records[2]
    assert records[0]["timestamp"].endswith("Z")
    assert records[0]["level"] == "info"
    assert records[1]["logger"] == "exchangelib.services"


def test_library_debug_is_off_by_default(configured: Configure) -> None:
    """Library loggers sit at WARNING unless asked; our own DEBUG follows ``level``."""
    buffer = configured(fmt="json", level="debug")
    logging.getLogger("msal.token").debug("token response")
    logging.getLogger("httpx").info("HTTP Request")
    get_logger("listener.x").debug("ours")
    events = [json.loads(line)["event"] for line in _lines(buffer)]
    assert events == ["ours"]


def test_library_debug_is_still_redacted(configured: Configure) -> None:
    """With library DEBUG on, headers and token bodies from stdlib records are masked."""
    buffer = configured(fmt="json", level="debug", library_level="debug")
    logging.getLogger("exchangelib.util").debug(
        "Request headers: %s", {"Authorization": f"Bearer {JWT}", "X-AnchorMailbox": "a@b.c"}
    )
    logging.getLogger("msal.application").debug('Response: {"access_token": "opaque-tok-1234"}')
    logging.getLogger("urllib3.connectionpool").debug(
        "POST /t HTTP/1.1 body=client_id=x&client_secret=plain-text-secret"
    )
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        logging.getLogger("apscheduler.executors").exception("job failed")
    output = buffer.getvalue()
    assert len(_lines(buffer)) == 4
    for leak in (JWT[:16], "opaque-tok-1234", "plain-text-secret"):
        assert leak not in output
    assert "a@b.c" in output
    assert "ValueError" in output


def test_warning_level_filters_info(configured: Configure) -> None:
    """``level="warning"`` drops our info lines."""
    buffer = configured(fmt="json", level="warning")
    log = get_logger("listener.x")
    log.info("dropped")
    log.warning("kept")
    assert [json.loads(line)["event"] for line in _lines(buffer)] == ["kept"]


def test_configure_twice_adds_one_handler(configured: Configure) -> None:
    """Calling configure_logging again replaces our handler instead of adding another."""
    first = configured(fmt="json")
    second = configured(fmt="json")
    named = [h for h in logging.getLogger().handlers if h.get_name() == "ews-listener"]
    assert len(named) == 1
    get_logger("listener.x").info("once")
    assert _lines(first) == []
    assert len(_lines(second)) == 1


def test_same_arguments_are_a_no_op() -> None:
    """A repeated call with identical arguments keeps the very same handler."""
    from listener.observability.logging import reset_logging

    stream = io.StringIO()
    try:
        configure_logging(fmt="json", stream=stream)
        before = list(logging.getLogger().handlers)
        configure_logging(fmt="json", stream=stream)
        assert logging.getLogger().handlers == before
    finally:
        reset_logging()


def test_auto_picks_console_on_a_tty_and_json_otherwise(configured: Configure) -> None:
    """``fmt="auto"`` renders JSON to a pipe and the console format to a terminal."""
    pipe = configured(fmt="auto")
    get_logger("listener.x").info("to pipe", n=1)
    assert json.loads(_lines(pipe)[0])["event"] == "to pipe"
    tty = configured(fmt="auto", tty=True)
    get_logger("listener.x").info("to tty", n=1)
    line = _lines(tty)[0]
    assert "to tty" in line
    assert not line.startswith("{")


def test_unknown_objects_are_redacted_through_their_repr(configured: Configure) -> None:
    """An arbitrary object whose repr holds a token is rendered masked."""

    class Request:
        def __repr__(self) -> str:
            return f"<Request headers={{'Authorization': 'Bearer {JWT}'}}>"

    buffer = configured(fmt="json")
    get_logger("listener.x").info("sent", request=Request(), count=3, deep={"r": [Request()]})
    record = json.loads(_lines(buffer)[0])
    assert JWT[:16] not in record["request"]
    assert JWT[:16] not in record["deep"]["r"][0]
    assert record["count"] == 3


def test_unknown_level_is_an_error() -> None:
    """A misspelt level names itself in the error."""
    with pytest.raises(ValueError, match="verbose"):
        configure_logging(level="verbose", stream=io.StringIO())


def test_real_library_debug_output_is_redacted(configured: Configure) -> None:
    """urllib3's own DEBUG line for a real request has the client secret in the URL masked."""
    import urllib3

    from listener.observability.health import HealthServer, HealthState

    buffer = configured(fmt="json", level="debug", library_level="debug")
    with HealthServer(HealthState()) as server:
        pool = urllib3.PoolManager()
        response = pool.request(
            "GET",
            f"{server.url}/token?grant_type=client_credentials&client_secret=live-secret-42",
            headers={"Authorization": f"Bearer {JWT}"},
        )
        pool.clear()
    assert response.status == 404
    output = buffer.getvalue()
    assert "urllib3.connectionpool" in output, "urllib3 logged nothing: the test proves nothing"
    assert "client_secret=***" in output
    assert "live-secret-42" not in output
