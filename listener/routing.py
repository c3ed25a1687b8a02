"""Routing rules: which handlers a message goes to (STUB: being written by the handlers owner)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Route"]


class Route(BaseModel):
    """One rule: when every condition given matches, hand the message to ``handlers``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    handlers: tuple[str, ...] = Field(min_length=1)
    continue_: bool = Field(default=False, alias="continue")
