"""Fixtures for the observability tests: logging configured into a buffer, then undone."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest

from listener.observability.logging import configure_logging, reset_logging
from listener.observability.redaction import forget_secrets


class _TtyBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def configured() -> Iterator[Callable[..., io.StringIO]]:
    """Call it with ``configure_logging`` arguments; returns the buffer lines are written to."""

    def configure(*, tty: bool = False, **kwargs: object) -> io.StringIO:
        buffer = _TtyBuffer() if tty else io.StringIO()
        configure_logging(stream=buffer, **kwargs)  # type: ignore[arg-type]
        return buffer

    try:
        yield configure
    finally:
        reset_logging()
        forget_secrets()


@pytest.fixture(autouse=True)
def _no_leftover_secrets() -> Iterator[None]:
    yield
    forget_secrets()
