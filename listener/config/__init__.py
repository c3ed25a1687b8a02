"""Configuration: a TOML file plus ``EWS_LISTENER_…`` environment overrides, validated at once.

``load_settings(path, env)`` reports EVERY problem as a ``ConfigIssue`` (file, dotted location,
the value with secrets masked, what was expected) and names the environment variable a value came
from. Nothing is read from disk, the environment or the network at import; secrets are read only
when a token is needed (``listener.secrets``).

Environment overrides: ``EWS_LISTENER_`` + the dotted path joined by ``__``, matched
case-insensitively (``EWS_LISTENER_CREDENTIALS__SALES__CLIENT_ID`` sets
``[credentials.sales] client_id``); complex values (lists, tables) as JSON.
"""

from __future__ import annotations

from listener.config.loading import ConfigError, ConfigIssue, load_settings
from listener.config.models import (
    DEFAULT_EWS_ENDPOINT,
    DEFAULT_GRAPH_ENDPOINT,
    ENV_CONFIG,
    ENV_PREFIX,
    Action,
    CertificateConfig,
    ClusterConfig,
    CredentialConfig,
    FailureConfig,
    MailboxConfig,
    ServiceConfig,
    Settings,
    StateConfig,
    cluster_active,
    default_state_url,
)

__all__ = [
    "DEFAULT_EWS_ENDPOINT",
    "DEFAULT_GRAPH_ENDPOINT",
    "ENV_CONFIG",
    "ENV_PREFIX",
    "Action",
    "CertificateConfig",
    "ClusterConfig",
    "ConfigError",
    "ConfigIssue",
    "CredentialConfig",
    "FailureConfig",
    "MailboxConfig",
    "ServiceConfig",
    "Settings",
    "StateConfig",
    "cluster_active",
    "default_state_url",
    "load_settings",
]
