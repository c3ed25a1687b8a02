"""The operations corpus: faults of the world around one mailbox, and what ``once`` makes of them.

Every case has a healthy mailbox (``good``) next to the one that meets the fault (``bad``). The
first ``ews-listener once --json`` must name the fault in ``bad``'s summary (and exit 75 when the
poll failed), while ``good`` goes on and hands its message over; once the fault is removed, a
second ``once`` hands ``bad``'s waiting message over: nothing is lost.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer
from listener.errors import EXIT_OK, EXIT_TEMPFAIL, EXIT_UNAVAILABLE
from tests.badconfig.conftest import (
    EitherVerifier,
    OnceRun,
    SkewedVerifier,
    in_mount_namespace,
    run_once,
)
from tests.e2e.conftest import APPS, SCHEMA_DIR, TENANT, World

pytestmark = pytest.mark.slow

GOOD = {"address": "good@contoso.com", "credential": "sales", "start_from": "all"}
PARTNER_ID = "11111111-aaaa-4bbb-8ccc-000000000003"
PARTNER_SECRET = "partner-s3cret/+=&z"


def subjects(world: World) -> list[str]:
    """Subjects handed over so far (receipt log), sorted."""
    return sorted(str(r["subject"]) for r in world.receipts_log())


def ledger_count(world: World, state: Path | None = None) -> int:
    with sqlite3.connect(state or world.state) as db:
        return int(db.execute("SELECT count(*) FROM ledger").fetchone()[0])


def assert_bad_failed(run: OnceRun, *fragments: str) -> str:
    """Exit 75; ``bad`` failed with every fragment in its error; ``good`` handed over its mail."""
    assert run.code == EXIT_TEMPFAIL, run.log[-3000:]
    assert run.summary["ok"] is False
    bad, good = run.mailbox("bad"), run.mailbox("good")
    assert bad["ok"] is False
    error = str(bad["error"])
    for fragment in fragments:
        assert fragment in error, error
    assert good["ok"] is True, good
    assert good["handed_over"] == 1, good
    return error


def assert_recovered(run: OnceRun, world: World) -> None:
    """Exit 0, ``bad`` handed its waiting message over, and both messages are in the ledger."""
    assert run.code == EXIT_OK, run.log[-3000:]
    assert run.mailbox("bad")["handed_over"] == 1, run.summary
    assert subjects(world) == ["bad 1", "good 1"]


def setup_pair(world: World, bad: dict[str, Any], *, extra: str = "") -> Path:
    """Deliver ``good 1`` and (when the mailbox exists) ``bad 1``; write the two-mailbox config."""
    world.deliver("good@contoso.com", "good 1")
    address = str(bad.get("address", "orders@contoso.com"))
    folder = str(bad.get("folder", "inbox"))
    # Other folders, and the ghost mailbox, are missing on purpose: nothing to deliver into.
    if world.ews.store.mailbox(address) is not None and folder == "inbox":
        world.deliver(address, "bad 1", folder=folder)
    return world.config(
        {
            "good": GOOD,
            "bad": {
                "address": address,
                "credential": "sales",
                "start_from": "all",
                "on_failure": {"max_attempts": 5, "backoff": 0.05},
                **bad,
            },
        },
        extra=extra,
    )


def partner_credential(endpoint: str, ca_file: Path) -> str:
    """TOML of a third credential ``partner`` whose secret comes from ``$E2E_SECRET_PARTNER``."""
    return "\n".join(
        [
            "[credentials.partner]",
            f'client_id = "{PARTNER_ID}"',
            f'token_endpoint = "{endpoint}"',
            'scopes = "https://outlook.office365.com/.default"',
            'auth_method = "basic"',
            f'ca_bundle = "{ca_file}"',
            'secret = { source = "env", name = "E2E_SECRET_PARTNER" }',
            "",
        ]
    )


# --- endpoints -----------------------------------------------------------------------------------


@pytest.fixture
def second_ews(ops: World) -> Iterator[EwsEmulator]:
    """Another EWS endpoint over the same mail store, on a port that is closed until started."""
    other = EwsEmulator(ops.tokens, ops.ca, schema_dir=SCHEMA_DIR)
    other.store = ops.ews.store
    other.start()
    other.stop()
    yield other
    other.stop()


def test_unreachable_ews_endpoint(ops: World, second_ews: EwsEmulator) -> None:
    """A closed EWS port fails that mailbox only (connection refused); once it listens, no loss."""
    ops.ews.add_mailbox("orders@contoso.com")
    config = setup_pair(ops, {"endpoint": second_ews.url})
    first = run_once(ops, config)
    assert_bad_failed(first, "onnect")
    assert first.mailbox("bad")["error_code"]
    second_ews.start()
    assert_recovered(run_once(ops, config), ops)


@pytest.fixture
def partner_tokens(ops: World) -> Iterator[TokenServer]:
    """A second identity server (down until told) whose tokens the EWS emulator also accepts."""
    server = TokenServer(ca=ops.ca, token_lifetime=3600)
    server.start()
    server.add_tenant(TENANT)
    server.register_app(TENANT, PARTNER_ID, secret=PARTNER_SECRET)
    server.go_down()
    ops.ews.token_server = EitherVerifier(ops.tokens, server)
    yield server
    server.stop()


def test_unreachable_token_endpoint(ops: World, partner_tokens: TokenServer) -> None:
    """A token endpoint that refuses connections fails its mailboxes only; back up, no loss."""
    ops.ews.add_mailbox("orders@contoso.com")
    extra = partner_credential(partner_tokens.token_endpoint(TENANT), ops.ca.ca_file)
    config = setup_pair(ops, {"credential": "partner"}, extra=extra)
    env = {"E2E_SECRET_PARTNER": PARTNER_SECRET}
    first = run_once(ops, config, env=env)
    error = assert_bad_failed(first)
    assert first.mailbox("bad")["error_code"].startswith("TokenError"), first.summary
    assert "token" in error.lower(), error
    partner_tokens.come_back()
    assert_recovered(run_once(ops, config, env=env), ops)
    assert PARTNER_SECRET not in first.log


def test_wrong_client_secret_names_aadsts7000215(ops: World) -> None:
    """A wrong secret fails that mailbox with AADSTS7000215; the right one hands the mail over."""
    ops.tokens.register_app(TENANT, PARTNER_ID, secret=PARTNER_SECRET)
    ops.ews.add_mailbox("orders@contoso.com")
    extra = partner_credential(ops.tokens.token_endpoint(TENANT), ops.ca.ca_file)
    config = setup_pair(ops, {"credential": "partner"}, extra=extra)
    wrong = "not-the-s3cret/+=&"
    first = run_once(ops, config, env={"E2E_SECRET_PARTNER": wrong})
    assert_bad_failed(first, "credential 'partner'", "AADSTS7000215", "secret is wrong or expired")
    assert first.mailbox("bad")["error_code"].startswith("TokenError")
    assert wrong not in first.log
    assert PARTNER_SECRET not in first.log
    assert_recovered(run_once(ops, config, env={"E2E_SECRET_PARTNER": PARTNER_SECRET}), ops)


# --- Exchange's answers --------------------------------------------------------------------------


def test_denied_impersonation(ops: World) -> None:
    """An app scoped away from the mailbox gets ErrorImpersonateUserDenied; rescoped, no loss."""
    ops.ews.add_mailbox("orders@contoso.com")
    ops.ews.allow(APPS["sales"][0], ["good@contoso.com"])
    config = setup_pair(ops, {})
    first = run_once(ops, config)
    assert_bad_failed(first, "ErrorImpersonateUserDenied")
    assert first.mailbox("bad")["error_code"] == "ErrorImpersonateUserDenied"
    ops.ews.allow(APPS["sales"][0], None)
    assert_recovered(run_once(ops, config), ops)


def test_non_existent_mailbox(ops: World) -> None:
    """A mailbox that does not exist yet is ErrorNonExistentMailbox; created, its mail arrives."""
    config = setup_pair(ops, {"address": "ghost@contoso.com"})
    first = run_once(ops, config)
    assert_bad_failed(first, "ErrorNonExistentMailbox")
    ops.ews.add_mailbox("ghost@contoso.com")
    ops.deliver("ghost@contoso.com", "bad 1")
    assert_recovered(run_once(ops, config), ops)


def test_folder_that_does_not_exist(ops: World) -> None:
    """``folder = "Inbox/Nope"`` fails naming the folder; once it exists, its mail arrives."""
    ops.ews.add_mailbox("orders@contoso.com")
    config = setup_pair(ops, {"folder": "Inbox/Nope"})
    first = run_once(ops, config)
    assert_bad_failed(first, "Nope")
    ops.ews.create_folder("orders@contoso.com", "Inbox/Nope")
    ops.deliver("orders@contoso.com", "bad 1", folder="Inbox/Nope")
    assert_recovered(run_once(ops, config), ops)


# --- tokens and clocks ---------------------------------------------------------------------------


def test_token_server_clock_behind_exchange(ops: World) -> None:
    """Tokens Exchange finds expired on arrival fail the polls clearly; clocks fixed, no loss."""
    ops.ews.add_mailbox("orders@contoso.com")
    config = setup_pair(ops, {})
    ops.tokens.clock = lambda: time.time() - 7200  # issues tokens that expired an hour ago
    ops.ews.token_server = SkewedVerifier(ops.tokens)  # Exchange checks against the real time
    first = run_once(ops, config)
    assert first.code == EXIT_TEMPFAIL, first.log[-3000:]
    for name in ("good", "bad"):
        assert "401" in str(first.mailbox(name)["error"]), first.summary
        assert first.mailbox(name)["error_code"] == "Unauthorized"
    assert subjects(ops) == []
    ops.tokens.clock = time.time
    again = run_once(ops, config)
    assert again.code == EXIT_OK, again.log[-3000:]
    assert subjects(ops) == ["bad 1", "good 1"]


def test_expired_on_arrival_error_names_the_expiry(ops: World) -> None:
    """When Exchange says token_expired even for fresh tokens, the error says so (clock skew)."""
    ops.ews.add_mailbox("orders@contoso.com")
    config = setup_pair(ops, {})
    ops.tokens.clock = lambda: time.time() - 7200
    ops.ews.token_server = SkewedVerifier(ops.tokens)
    first = run_once(ops, config)
    assert "expired" in str(first.mailbox("bad")["error"]).lower()


def test_stale_token_on_arrival_is_replaced_within_the_poll(ops: World) -> None:
    """A token Exchange rejects as expired is replaced by a new one in the same poll: no error."""
    ops.ews.add_mailbox("orders@contoso.com")
    config = setup_pair(ops, {})
    ops.ews.token_server = SkewedVerifier(ops.tokens, reject_first=1)
    run = run_once(ops, config)
    assert run.code == EXIT_OK, run.log[-3000:]
    assert subjects(ops) == ["bad 1", "good 1"]
    assert ops.tokens.request_count(APPS["sales"][0]) >= 2


# --- the state database --------------------------------------------------------------------------


def test_state_database_locked(ops: World) -> None:
    """Another process holding the write lock fails the polls naming the lock; released, no loss."""
    ops.ews.add_mailbox("orders@contoso.com")
    run_once(ops, ops.config({"good": GOOD}, name="warm.toml"))  # creates the schema
    config = setup_pair(ops, {})
    lock_holder = sqlite3.connect(ops.state, isolation_level=None)
    lock_holder.execute("BEGIN EXCLUSIVE")
    try:
        first = run_once(ops, config)
    finally:
        lock_holder.execute("ROLLBACK")
        lock_holder.close()
    # The store is opened before any poll, so the lock stops the whole run (exit 1), not one
    # mailbox; the message names the file and the likely cause.
    assert first.code == EXIT_UNAVAILABLE, first.log[-3000:]
    assert f"state database {ops.state} stayed locked by another process" in first.log
    assert subjects(ops) == []
    again = run_once(ops, config)
    assert again.code == EXIT_OK, again.log[-3000:]
    assert subjects(ops) == ["bad 1", "good 1"]
    assert ledger_count(ops) == 2


def test_state_database_read_only(ops: World, mount_namespaces: None) -> None:
    """A read-only state directory is a clear error naming the database; writable again, no loss."""
    ops.ews.add_mailbox("orders@contoso.com")
    config = setup_pair(ops, {})
    state_dir = ops.root / "state"
    state_dir.mkdir()
    state = state_dir / "state.db"
    env = {"EWS_LISTENER_STATE__URL": f"sqlite:///{state}"}
    run_once(ops, ops.config({"good": GOOD}, name="warm.toml"), env=env)  # creates the schema
    ops.receipts.unlink(missing_ok=True)
    ops.deliver("good@contoso.com", "good 1")
    read_only = in_mount_namespace(
        f"mount --bind '{state_dir}' '{state_dir}'\nmount -o remount,ro,bind '{state_dir}'"
    )
    first = run_once(ops, config, wrapper=read_only, env=env)
    # The store is opened before any poll: the whole run stops, 69 (EX_UNAVAILABLE).
    assert first.code == EXIT_UNAVAILABLE, first.log[-3000:]
    assert "read-only" in first.log, first.log[-3000:]
    assert str(state) in first.log
    assert subjects(ops) == []  # nothing was handed over that could not be recorded
    again = run_once(ops, config, env=env)
    assert again.code == EXIT_OK, again.log[-3000:]
    assert subjects(ops) == ["bad 1", "good 1"]
    assert ledger_count(ops, state) == 3  # the warm-up's message and these two


# --- the handler's disk --------------------------------------------------------------------------


def test_disk_full_while_writing_eml_is_retried(ops: World, mount_namespaces: None) -> None:
    """A full disk under the directory handler parks the message; with space, it is written."""
    ops.ews.add_mailbox("orders@contoso.com")
    out = ops.root / "out"
    out.mkdir()
    extra = f'[handlers.files]\ntype = "directory"\npath = "{out}"\n'
    config = setup_pair(ops, {"routes": [{"handlers": ["files"]}]}, extra=extra)
    ops.deliver("orders@contoso.com", "bad big", body="x" * 200_000)
    # A 16 KiB tmpfs, filled up: not even the small message's .eml fits.
    full = in_mount_namespace(
        f"mount -t tmpfs -o size=16k tmpfs '{out}'\n"
        f"head -c 1048576 /dev/zero > '{out}/filler' || true"
    )
    first = run_once(ops, config, wrapper=full)
    bad = first.mailbox("bad")
    assert first.code == EXIT_OK, first.log[-3000:]  # parked for a retry: the poll itself is fine
    assert bad["failed"] == 2, bad
    assert bad["handed_over"] == 0, bad
    assert "no space left" in first.log.lower(), first.log[-3000:]
    assert first.mailbox("good")["handed_over"] == 1
    assert list(out.iterdir()) == []  # the tmpfs went away with its namespace
    with sqlite3.connect(ops.state) as db:
        assert db.execute("SELECT count(*) FROM pending").fetchone()[0] == 2
    time.sleep(0.1)  # the configured back-off (0.05 s): the retry is due at the next poll
    again = run_once(ops, config)
    assert again.code == EXIT_OK, again.log[-3000:]
    assert again.mailbox("bad")["handed_over"] == 2, again.summary
    written = sorted(p.suffix for p in out.iterdir())
    assert written == [".eml", ".eml", ".json", ".json"], written
    assert max(p.stat().st_size for p in out.glob("*.eml")) > 200_000
    with sqlite3.connect(ops.state) as db:
        assert db.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
