"""What every configuration section shares: the strict model base, names, default endpoints."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

__all__ = [
    "DEFAULT_EWS_ENDPOINT",
    "DEFAULT_GRAPH_ENDPOINT",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "NAME_PATTERN",
    "Model",
]

ENV_PREFIX = "EWS_LISTENER_"
ENV_CONFIG = "EWS_LISTENER_CONFIG"
DEFAULT_EWS_ENDPOINT = "https://outlook.office365.com/EWS/Exchange.asmx"
# Graph's service root; national clouds and the emulator by URL (https://graph.microsoft.us/v1.0,
# https://127.0.0.1:8443/v1.0).
DEFAULT_GRAPH_ENDPOINT = "https://graph.microsoft.com/v1.0"

# Lower-case only: environment variables are matched case-insensitively, so a table named "Sales"
# could never be overridden by EWS_LISTENER_CREDENTIALS__SALES__….
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


class Model(BaseModel):
    """A configuration table: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
