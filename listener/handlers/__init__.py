"""Built-in handlers and the factory that builds them from configuration.

A handler is a callable receiving the frozen :class:`listener.model.Message` (the
``listener.abc.Handler`` protocol): it returns on success, raises
``listener.errors.PermanentError`` when trying again cannot help, and raises anything else to be
retried later. Built-ins: ``python`` (a dotted path or an ``ews_listener.handlers`` entry point),
``webhook``, ``command``, ``directory`` and ``log``; and the broker handlers ``amqp``, ``nats`` and
``redis_stream``, whose client libraries are extras (``ews-listener[amqp]``, ``[nats]``,
``[redis]``): they are imported only when such a handler is built.
"""

from __future__ import annotations

from collections.abc import Mapping

from listener.abc import Handler
from listener.handlers._brokers import require
from listener.handlers.command import CommandHandler
from listener.handlers.config import (
    AmqpHandlerConfig,
    CommandHandlerConfig,
    DirectoryHandlerConfig,
    HandlerConfig,
    LogHandlerConfig,
    NatsHandlerConfig,
    PythonHandlerConfig,
    RedisStreamHandlerConfig,
    WebhookHandlerConfig,
)
from listener.handlers.directory import DirectoryHandler
from listener.handlers.errors import (
    HandlerConfigError,
    HandlerPermanentError,
    HandlerTransientError,
)
from listener.handlers.log import LogHandler
from listener.handlers.python import PythonHandler
from listener.handlers.webhook import WebhookHandler

__all__ = [
    "AmqpHandlerConfig",
    "CommandHandler",
    "CommandHandlerConfig",
    "DirectoryHandler",
    "DirectoryHandlerConfig",
    "HandlerConfig",
    "HandlerConfigError",
    "HandlerPermanentError",
    "HandlerTransientError",
    "LogHandler",
    "LogHandlerConfig",
    "NatsHandlerConfig",
    "PythonHandler",
    "PythonHandlerConfig",
    "RedisStreamHandlerConfig",
    "WebhookHandler",
    "WebhookHandlerConfig",
    "build_handler",
    "build_handlers",
]


def build_handler(name: str, config: HandlerConfig) -> Handler:
    """The handler ``config`` describes, named ``name``; ``HandlerConfigError`` when it cannot be.

    Building does no network I/O and reads no secret: a webhook's secret is read when the first
    message is signed, so a vault that is down fails messages (to be retried), not start-up.
    """
    if isinstance(config, PythonHandlerConfig):
        return PythonHandler.from_config(name, config)
    if isinstance(config, WebhookHandlerConfig):
        return WebhookHandler.from_config(name, config)
    if isinstance(config, CommandHandlerConfig):
        return CommandHandler.from_config(name, config)
    if isinstance(config, DirectoryHandlerConfig):
        return DirectoryHandler.from_config(name, config)
    if isinstance(config, LogHandlerConfig):
        return LogHandler.from_config(name, config)
    # The broker clients are optional: import them only for a handler that needs one.
    if isinstance(config, AmqpHandlerConfig):
        require("pika", handler=name, kind="amqp", extra="amqp")
        from listener.handlers.amqp import AmqpHandler  # noqa: PLC0415 (an optional extra)

        return AmqpHandler.from_config(name, config)
    if isinstance(config, NatsHandlerConfig):
        require("nats", handler=name, kind="nats", extra="nats")
        from listener.handlers.nats import NatsHandler  # noqa: PLC0415 (an optional extra)

        return NatsHandler.from_config(name, config)
    if isinstance(config, RedisStreamHandlerConfig):
        require("redis", handler=name, kind="redis_stream", extra="redis")
        from listener.handlers.redis_stream import RedisStreamHandler  # noqa: PLC0415 (an optional extra)

        return RedisStreamHandler.from_config(name, config)
    raise HandlerConfigError(f"handlers.{name}: unknown handler type {type(config).__name__}")


def build_handlers(configs: Mapping[str, HandlerConfig]) -> dict[str, Handler]:
    """Every configured handler by name; on a failure the ones already built are closed."""
    built: dict[str, Handler] = {}
    try:
        for name, config in configs.items():
            built[name] = build_handler(name, config)
    except BaseException:
        for handler in built.values():
            handler.close()
        raise
    return built
