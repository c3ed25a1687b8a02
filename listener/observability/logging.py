"""structlog set up once: JSON lines (or a console renderer), UTC timestamps, redaction last.

Every line goes through the same chain, whether it comes from structlog (our code) or from the
standard library ``logging`` (exchangelib, msal, httpx, apscheduler, urllib3):

    contextvars (mailbox, credential, poll_id) → level, logger name, UTC ISO timestamp
    → exception rendered to text (``format_exc_info``) → **redaction** → renderer

Redaction runs after the exception has become text, so a token inside an exception message or a
traceback line is masked too, and it runs on the formatter side, so it holds for library records
even when a user turns their DEBUG on (exchangelib's DEBUG logs whole request headers; msal's
logs token responses).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from listener.observability.console import PersonRenderer
from listener.observability.redaction import (
    MASK,
    is_secret_key,
    is_secret_pair,
    redact,
    redact_value,
)

__all__ = [
    "LIBRARY_LOGGERS",
    "configure_logging",
    "get_logger",
    "redact_event",
    "reset_logging",
]

Format = Literal["auto", "json", "console"]

#: Third-party loggers held at ``library_level`` (WARNING by default): their DEBUG is noisy and,
#: for the HTTP and auth libraries, full of headers and token responses.
LIBRARY_LOGGERS = (
    "exchangelib",
    "msal",
    "httpx",
    "httpcore",
    "urllib3",
    "requests",
    "requests_oauthlib",
    "oauthlib",
    "apscheduler",
    "azure",
    "hvac",
    "tzlocal",
)

# Values that need no redaction and no repr check.
_PLAIN = (int, float, bool, type(None))


def _redact_field(value: Any) -> Any:
    """Like ``redact_value``, and objects of any other type, however deep, by their repr."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, str | bytes | bytearray):
        return redact_value(value)
    if isinstance(value, Mapping):
        return {k: _mask_or_redact(k, v) for k, v in value.items()}
    if isinstance(value, tuple) and is_secret_pair(value):
        return (value[0], MASK)
    if isinstance(value, list | tuple | set | frozenset):
        items = [_redact_field(v) for v in value]
        return items if isinstance(value, list) else type(value)(items)
    # Both renderers write any other object through its repr: check that text, and replace the
    # object only when redaction changed something (a datetime stays a datetime).
    text = repr(value)
    red = redact(text)
    return value if red == text else red


def _mask_or_redact(key: Any, value: Any) -> Any:
    if is_secret_key(key) and value is not None and value != "":
        return MASK
    return _redact_field(value)


# Fields every line has; never masked by name (``event`` may legitimately be "token.refreshed").
_KEEP = frozenset({"event", "level", "logger", "timestamp", "exception", "stack"})


def redact_event(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact every field, nested values and the rendered exception."""
    return {
        key: _redact_field(value) if key in _KEEP else _mask_or_redact(key, value)
        for key, value in event_dict.items()
    }


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.strip().upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown log level {level!r}: use debug, info, warning, error")
    return number


class _State:
    handler: logging.Handler | None = None
    key: tuple[Any, ...] | None = None


def configure_logging(
    *,
    fmt: Format = "auto",
    level: str | int = "info",
    stream: TextIO | None = None,
    library_level: str | int = "warning",
) -> None:
    """Configure structlog and the standard library's root logger; safe to call more than once.

    ``fmt="auto"`` renders JSON lines unless ``stream`` is a TTY. ``level`` applies to our own
    loggers, ``library_level`` to :data:`LIBRARY_LOGGERS`. A second call with the same arguments
    does nothing; one with different arguments replaces the first (our handler is never added
    twice), so the CLI's ``--log-format`` wins over an earlier default.
    """
    out = stream if stream is not None else sys.stderr
    key = (fmt, _level_number(level), id(out), _level_number(library_level))
    if _State.key == key and _State.handler is not None:
        return

    if fmt == "auto":
        isatty = getattr(out, "isatty", None)
        fmt = "console" if callable(isatty) and isatty() else "json"
    renderer: Processor
    if fmt == "console":
        # Short times and keys, one sentence per handled message (see console.py).
        renderer = PersonRenderer(colors=bool(getattr(out, "isatty", lambda: False)()))
    else:
        renderer = structlog.processors.JSONRenderer(ensure_ascii=False, default=repr)

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        timestamper,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            *shared,
            structlog.processors.UnicodeDecoder(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: module-level proxies created before this call must follow a later
        # reconfiguration (tests, and the CLI switching format after parsing arguments).
        cache_logger_on_first_use=False,
    )

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Last before rendering: sees the exception text and every field, from both worlds.
            redact_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.set_name("ews-listener")

    root = logging.getLogger()
    if _State.handler is not None:
        root.removeHandler(_State.handler)
    root.addHandler(handler)
    root.setLevel(_level_number(level))
    # Our own loggers follow ``level`` even if something set the "listener" logger's level before.
    logging.getLogger("listener").setLevel(_level_number(level))
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(_level_number(library_level))
    # warnings.warn(...) from libraries become log lines through the same chain.
    logging.captureWarnings(True)
    _State.handler = handler
    _State.key = key


def reset_logging() -> None:
    """Undo :func:`configure_logging`: structlog defaults, our handler removed (tests)."""
    structlog.reset_defaults()
    if _State.handler is not None:
        logging.getLogger().removeHandler(_State.handler)
    logging.captureWarnings(False)
    _State.handler = None
    _State.key = None


def get_logger(name: str, **initial: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name`` (the stdlib logger it writes through has that name)."""
    return cast(structlog.stdlib.BoundLogger, structlog.get_logger(name, **initial))
