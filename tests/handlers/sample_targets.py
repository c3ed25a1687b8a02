"""Callables the python-handler tests load by dotted path or entry point."""

from __future__ import annotations

import asyncio
from typing import Any

from listener.model import Message

CALLS: list[tuple[str, str]] = []


def record(message: Message) -> None:
    """A plain function handler."""
    CALLS.append(("record", message.idempotency_key))


async def record_async(message: Message) -> None:
    """A coroutine function handler."""
    await asyncio.sleep(0)
    CALLS.append(("async", message.idempotency_key))


class Recorder:
    """A handler object with a ``close`` (what a factory returns)."""

    def __init__(self, prefix: str, fail: bool = False) -> None:
        self.prefix = prefix
        self.fail = fail
        self.closed = 0

    def __call__(self, message: Message) -> None:
        if self.fail:
            raise RuntimeError(f"{self.prefix} failed")
        CALLS.append((self.prefix, message.idempotency_key))

    def close(self) -> None:
        self.closed += 1


INSTANCES: list[Recorder] = []


def make_recorder(**options: Any) -> Recorder:
    """A factory called with the configured ``options``."""
    recorder = Recorder(**options)
    INSTANCES.append(recorder)
    return recorder


def broken_factory(**options: Any) -> Recorder:
    """A factory that refuses its options."""
    raise ValueError(f"unknown options {sorted(options)}")


not_callable = 42
