"""Configuration models of the built-in handlers (STUB: being written by the handlers owner).

``HandlerConfig`` is a discriminated union on ``type``; ``listener.config`` uses it for the
``[handlers.NAME]`` tables.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["HandlerConfig", "LogHandlerConfig"]


class LogHandlerConfig(BaseModel):
    """Writes one log line per message."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["log"]


HandlerConfig = Annotated[LogHandlerConfig, Field(discriminator="type")]
