"""The ``python`` handler: a callable found by dotted path or by entry point.

A third-party package registers a handler (or a factory, when configured with ``options``) in
the ``ews_listener.handlers`` entry-point group, as APScheduler 3 does for its triggers::

    [project.entry-points."ews_listener.handlers"]
    crm = "acme_crm.listener:make_handler"
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from listener.handlers.config import ENTRY_POINT_GROUP, PythonHandlerConfig
from listener.handlers.errors import HandlerConfigError
from listener.model import Message

__all__ = ["PythonHandler", "load_target"]


def load_target(target: str) -> Any:
    """The object named by ``package.module:attribute.path``; ``ImportError``/``AttributeError``."""
    module_name, _, attribute = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def _load_entry_point(name: str) -> Any:
    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        available = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise LookupError(
            f"no entry point {name!r} in group {ENTRY_POINT_GROUP!r} "
            f"(installed: {', '.join(available) or 'none'})"
        )
    if len(found) > 1:
        owners = sorted(str(ep.value) for ep in found)
        raise LookupError(f"entry point {name!r} is registered more than once: {owners}")
    return next(iter(found)).load()


class PythonHandler:
    """Calls a Python callable with the frozen ``Message``; its exceptions are the outcome.

    A coroutine function is run to completion with ``asyncio.run`` in the calling thread. When
    the callable has a ``close()`` it is called once by :meth:`close`.
    """

    def __init__(self, name: str, function: Callable[[Message], object]) -> None:
        self.name = name
        self._function = function
        self._closed = False

    @classmethod
    def from_config(cls, name: str, config: PythonHandlerConfig) -> PythonHandler:
        """Import the target (and call the factory); ``HandlerConfigError`` naming the field."""
        where = f"handlers.{name}"
        if config.target is not None:
            field, ref = "target", config.target
            try:
                obj = load_target(config.target)
            except (ImportError, AttributeError) as e:
                raise HandlerConfigError(
                    f"{where}.target: cannot load {ref!r}: {type(e).__name__}: {e}"
                ) from e
        else:
            assert config.entry_point is not None
            field, ref = "entry_point", config.entry_point
            try:
                obj = _load_entry_point(config.entry_point)
            except (LookupError, ImportError, AttributeError) as e:
                raise HandlerConfigError(f"{where}.entry_point: {e}") from e
        if config.options is not None:
            if not callable(obj):
                raise HandlerConfigError(f"{where}.{field}: {ref!r} is not a callable factory")
            try:
                obj = obj(**config.options)
            except Exception as e:
                raise HandlerConfigError(
                    f"{where}.options: the factory {ref!r} failed: {type(e).__name__}: {e}"
                ) from e
        if not callable(obj):
            raise HandlerConfigError(
                f"{where}.{field}: {ref!r} is not callable (got {type(obj).__name__})"
            )
        return cls(name, obj)

    def __call__(self, message: Message) -> None:
        """Hand ``message`` to the callable; a returned value is ignored."""
        result = self._function(message)
        if inspect.isawaitable(result):
            asyncio.run(_await(result))

    def close(self) -> None:
        """Call the callable's ``close()`` once, if it has one."""
        if self._closed:
            return
        self._closed = True
        close = getattr(self._function, "close", None)
        if callable(close):
            close()

    def __repr__(self) -> str:
        return f"PythonHandler(name={self.name!r}, function={self._function!r})"


async def _await(awaitable: Any) -> object:
    return await awaitable
