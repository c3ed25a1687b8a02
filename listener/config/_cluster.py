"""``[cluster]``: several replicas on one PostgreSQL database sharing the mailboxes (issue 16)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from listener.config._base import Model

__all__ = ["ClusterConfig", "cluster_active", "cluster_problems"]


class ClusterConfig(Model):
    """Several replicas on one PostgreSQL database sharing the mailboxes by lease (issue 16)."""

    # "auto": on with a PostgreSQL state.url (one process or several: safe either way), off with
    # SQLite (one process by construction). true with SQLite is a configuration error.
    enabled: bool | Literal["auto"] = "auto"
    # This replica's name in the leases; default "<host name>-<pid>" (a restart is a new replica).
    replica_id: str | None = Field(default=None, min_length=1, max_length=200)
    # A lease not renewed for this long is free for the others (a SIGKILLed replica's mailboxes
    # wait this long); renewals, claims and rebalancing happen every renew_seconds.
    lease_seconds: float = Field(default=15.0, gt=0, le=3600)
    renew_seconds: float = Field(default=5.0, gt=0, le=1200)
    # How many replicas share each credential's max_connections: each replica opens at most
    # ceil(max_connections / replicas) connections per credential (see README "Running several
    # replicas"). Set it to the number of replicas you run.
    replicas: int = Field(default=1, ge=1, le=1000)

    @model_validator(mode="after")
    def _renew_within_lease(self) -> ClusterConfig:
        if self.renew_seconds * 2 > self.lease_seconds:
            raise ValueError(
                f"renew_seconds ({self.renew_seconds:g}) must be at most half of lease_seconds "
                f"({self.lease_seconds:g}): one late renewal must not lose every lease"
            )
        return self


def cluster_active(cluster: ClusterConfig, state_url: str) -> bool:
    """Whether this configuration runs as a replica among others (leases and fencing)."""
    if cluster.enabled == "auto":
        return state_url.split(":", 1)[0].split("+", 1)[0] in {"postgresql", "postgres"}
    return bool(cluster.enabled)


def cluster_problems(cluster: ClusterConfig, state_url: str) -> list[tuple[tuple[str, ...], str]]:
    """``cluster.enabled = true`` with a state database other than PostgreSQL."""
    if cluster.enabled is True and not cluster_active(
        cluster.model_copy(update={"enabled": "auto"}), state_url
    ):
        return [
            (
                ("cluster", "enabled"),
                "true needs a PostgreSQL state.url (postgresql://user@host/db): the leases "
                "several replicas share live there; a SQLite file serves one process",
            )
        ]
    return []
