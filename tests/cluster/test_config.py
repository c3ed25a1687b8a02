"""``[cluster]``: on by default with PostgreSQL, refused with SQLite, caps shared by replicas;
``ews-listener cluster status`` on the real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from listener.cli import main
from listener.cluster import replica_id, share_caps
from listener.config import cluster_active
from listener.errors import EXIT_OK
from listener.store import SqlStateStore
from tests import REPO
from tests.config.test_config import BASE, issues, load, one

PG = 'url = "postgresql://listener@db.internal/ews"'


@pytest.mark.parametrize(
    ("state", "cluster", "active"),
    [
        ("", "", False),  # the SQLite default
        (PG, "", True),  # auto with PostgreSQL
        (PG, "enabled = false", False),
        (PG, "enabled = true", True),
    ],
)
def test_the_cluster_is_on_with_postgresql(
    tmp_path: Path, state: str, cluster: str, active: bool
) -> None:
    """Nothing to configure: a PostgreSQL state.url turns coordination on, SQLite keeps it off."""
    settings = load(tmp_path, f"{BASE}\n[state]\n{state}\n[cluster]\n{cluster}\n")
    assert cluster_active(settings.cluster, settings.state.url) is active


def test_enabled_with_sqlite_names_the_field(tmp_path: Path) -> None:
    """``cluster.enabled = true`` on SQLite is a configuration error that says what is needed."""
    issue = one(issues(tmp_path, f"{BASE}\n[cluster]\nenabled = true\n"), "cluster.enabled")
    assert "PostgreSQL state.url" in issue.message


def test_renewal_must_fit_twice_in_a_lease(tmp_path: Path) -> None:
    """A renewal interval over half the lease is refused, with both values."""
    text = f"{BASE}\n[state]\n{PG}\n[cluster]\nlease_seconds = 10\nrenew_seconds = 6\n"
    (issue,) = [i for i in issues(tmp_path, text) if i.location.startswith("cluster")]
    assert "renew_seconds (6)" in issue.message
    assert "lease_seconds (10)" in issue.message


@pytest.mark.parametrize(
    ("cap", "replicas", "share"), [(12, 3, 4), (4, 3, 2), (1, 5, 1), (4, 1, 4)]
)
def test_each_replica_opens_its_share_of_a_credential_cap(
    tmp_path: Path, cap: int, replicas: int, share: int
) -> None:
    """``max_connections`` is the cluster's: each replica gets ceil(cap / replicas)."""
    text = BASE.replace('scopes = "', f'max_connections = {cap}\nscopes = "')
    settings = load(tmp_path, f"{text}\n[state]\n{PG}\n[cluster]\nreplicas = {replicas}\n")
    assert share_caps(settings).credentials["sales"].max_connections == share


def test_caps_stay_whole_without_a_cluster(tmp_path: Path) -> None:
    """SQLite (one process): the configured cap, undivided."""
    text = BASE.replace('scopes = "', 'max_connections = 12\nscopes = "')
    settings = load(tmp_path, f"{text}\n[cluster]\nreplicas = 3\n")
    assert share_caps(settings).credentials["sales"].max_connections == 12


def test_replica_id_defaults_to_host_and_pid() -> None:
    """Unset: "<host>-<pid>"; set: as configured."""
    assert replica_id("a") == "a"
    assert replica_id(None).rsplit("-", 1)[1].isdigit()


@pytest.mark.postgres
def test_cluster_status_shows_replicas_leases_and_last_polls(
    tmp_path: Path, pg_url: str, pg_store: SqlStateStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cluster status --json`` lists each replica with its mailboxes, and each mailbox's owner,
    epoch, lease expiry and last poll; the table form names the same."""
    leases = pg_store.leases
    leases.join("r1", host="h1", pid=11, mailboxes=["orders", "invoices"])
    leases.claim("r1", ["orders"], limit=1, lease=30)
    leases.record_polls("r1", {"orders": (pg_store_now(pg_store), True)})
    config = tmp_path / "cluster.toml"
    config.write_text(f'{BASE}\n[state]\nurl = "{pg_url}"\n')
    assert main(["cluster", "status", "--json", "--config", str(config)]) == EXIT_OK
    status = json.loads(capsys.readouterr().out)
    assert [(r["replica"], r["live"], r["mailboxes"]) for r in status["replicas"]] == [
        ("r1", True, ["orders"])
    ]
    orders = {m["mailbox"]: m for m in status["mailboxes"]}["orders"]
    assert (orders["owner"], orders["epoch"], orders["last_poll_ok"]) == ("r1", 1, True)
    assert 0 < orders["expires_in_s"] <= 30
    assert status["unowned"] == ["invoices"]
    assert main(["cluster", "status", "--config", str(config)]) == EXIT_OK
    table = capsys.readouterr().out
    assert "r1" in table
    assert "unowned" in table


def pg_store_now(store: SqlStateStore) -> object:
    return store.leases.now()


def test_check_config_says_whether_the_cluster_is_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config names the cluster's state: on for config/cluster.toml, off on SQLite."""
    assert main(["check-config", "--config", str(REPO / "config" / "cluster.toml")]) == EXIT_OK
    assert "cluster: on as <host name>-<pid>, lease 15 s" in capsys.readouterr().out
    config = tmp_path / "one.toml"
    config.write_text(BASE)
    assert main(["check-config", "--config", str(config)]) == EXIT_OK
    assert "cluster: off (one process)" in capsys.readouterr().out
