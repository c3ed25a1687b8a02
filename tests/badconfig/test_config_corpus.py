"""The bad-configuration corpus: every mistake gets exit 78 and a message a person can act on.

Each case breaks one thing in a valid configuration and asserts that ``ews-listener check-config``
exits 78 naming the file (or the environment variable), the dotted field path, the value as given
(masked when secret) and what was expected, and that the inline secret never shows. A few cases go
through the real console script, ``once`` and ``run``, and show that a broken configuration
touches no state and no mail: fixing it hands the waiting message over.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from listener.errors import EXIT_CONFIG, EXIT_OK
from tests.badconfig.conftest import (
    REPO,
    SECRET,
    base_config,
    check_config,
    run_once,
    to_toml,
)
from tests.e2e.conftest import World

Mutation = Callable[[dict[str, Any]], None]


def put(path: str, value: Any) -> Mutation:
    """Set the dotted ``path`` (creating tables on the way) to ``value``."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        node[last] = value

    return mutate


def drop(path: str) -> Mutation:
    """Remove the dotted ``path``."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[part]
        del node[last]

    return mutate


def each(*mutations: Mutation) -> Mutation:
    """All of ``mutations``, in order."""

    def mutate(data: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(data)

    return mutate


@dataclass(frozen=True)
class Case:
    """One broken configuration and what its message must say."""

    mutate: Mutation | None
    location: str  # the dotted field path
    value: str | None  # how the value is shown ("(got ...)"); None: no value to show
    expected: str  # a fragment of "what was expected"
    env: dict[str, str] = field(default_factory=dict)
    env_var: str | None = None  # the variable the message must name instead of only the file
    raw: str | None = None  # the file's text instead of a mutation of the base


CASES: dict[str, Case] = {
    # --- wrong types and out-of-range values ---
    "interval-soon": Case(
        put("mailboxes.orders.interval", "soon"),
        "mailboxes.orders.interval",
        "'soon'",
        "valid number",
    ),
    "batch-size-0": Case(
        put("mailboxes.orders.batch_size", 0),
        "mailboxes.orders.batch_size",
        "0",
        "greater than or equal to 1",
    ),
    "batch-size-1000": Case(
        put("mailboxes.orders.batch_size", 1000),
        "mailboxes.orders.batch_size",
        "1000",
        "less than or equal to 512",
    ),
    "max-connections-99": Case(
        put("credentials.sales.max_connections", 99),
        "credentials.sales.max_connections",
        "99",
        "less than or equal to 27",
    ),
    "enabled-maybe": Case(
        put("mailboxes.orders.enabled", "maybe"),
        "mailboxes.orders.enabled",
        "'maybe'",
        "valid boolean",
    ),
    "timeout-zero": Case(
        put("credentials.sales.timeout", 0),
        "credentials.sales.timeout",
        "0",
        "greater than 0",
    ),
    "start-from-unknown": Case(
        put("mailboxes.orders.start_from", "everything"),
        "mailboxes.orders.start_from",
        "'everything'",
        "'new', 'unread' or 'all'",
    ),
    "routes-empty": Case(
        put("mailboxes.orders.routes", []),
        "mailboxes.orders.routes",
        "a list",
        "at least 1 item",
    ),
    # --- unknown keys, at every level ---
    "unknown-top-level-key": Case(
        put("pollinterval", 30), "pollinterval", None, "unknown section [pollinterval]"
    ),
    "unknown-key-in-credential": Case(
        put("credentials.sales.tenant", "contoso"),
        "credentials.sales.tenant",
        "'contoso'",
        "unknown key",
    ),
    "unknown-secret-key-in-credential-is-masked": Case(
        put("credentials.sales.client_secret", SECRET),
        "credentials.sales.client_secret",
        "'**********'",
        "unknown key",
    ),
    "unknown-key-in-mailbox": Case(
        put("mailboxes.orders.intervall", 5),
        "mailboxes.orders.intervall",
        "5",
        "unknown key",
    ),
    "unknown-key-in-handler": Case(
        put("handlers.archive.directory", "/tmp/out"),
        "handlers.archive.directory",
        "'/tmp/out'",
        "unknown key",
    ),
    "unknown-handler-type": Case(
        put("handlers.archive.type", "email"),
        "handlers.archive",
        None,
        "unknown type 'email'",
    ),
    # --- references and duplicates ---
    "duplicate-mailbox": Case(
        put(
            "mailboxes.orders-again",
            {
                "address": "Orders@contoso.com",
                "credential": "sales",
                "folder": "Inbox",
                "routes": [{"handlers": ["archive"]}],
            },
        ),
        "mailboxes.orders-again",
        None,
        "both watch Orders@contoso.com folder 'Inbox'",
    ),
    "unknown-credential": Case(
        put("mailboxes.orders.credential", "marketing"),
        "mailboxes.orders.credential",
        None,
        "no credential named 'marketing' (defined: sales)",
    ),
    "unknown-handler": Case(
        put("mailboxes.orders.routes", [{"handlers": ["archive", "erp"]}]),
        "mailboxes.orders.routes.0.handlers",
        None,
        "no handler named 'erp' (defined: archive)",
    ),
    # --- the mailbox's source (EWS or Microsoft Graph) ---
    "source-unknown": Case(
        put("mailboxes.orders.source", "imap"),
        "mailboxes.orders.source",
        "'imap'",
        "'ews' or 'graph'",
    ),
    "graph-source-without-graph-scope": Case(
        put("mailboxes.orders.source", "graph"),
        "mailboxes.orders.source",
        None,
        "'graph' needs a Microsoft Graph token, but credentials.sales.scopes "
        "('https://outlook.office365.com/.default') names no Graph resource; add "
        "'https://graph.microsoft.com/.default'",
    ),
    "version-on-graph-mailbox": Case(
        each(
            put("mailboxes.orders.source", "graph"),
            put("mailboxes.orders.version", "Exchange2019"),
            put("credentials.sales.scopes", "https://graph.microsoft.com/.default"),
        ),
        "mailboxes.orders.version",
        "'Exchange2019'",
        "is an EWS server version, and this mailbox's source is 'graph'",
    ),
    # --- push notifications (issue 15) ---
    "streaming-on-graph-mailbox": Case(
        each(
            put("mailboxes.orders.source", "graph"),
            put("credentials.sales.scopes", "https://graph.microsoft.com/.default"),
            put("mailboxes.orders.notifications", "streaming"),
        ),
        "mailboxes.orders.notifications",
        "'streaming'",
        "'streaming' is not available over 'graph': use 'webhook'",
    ),
    "webhook-without-notifications-graph": Case(
        each(
            put("mailboxes.orders.source", "graph"),
            put("credentials.sales.scopes", "https://graph.microsoft.com/.default"),
            put("mailboxes.orders.notifications", "webhook"),
            put("service.http_port", 8080),
        ),
        "notifications.graph",
        None,
        "mailbox(es) orders receive Graph change notifications, which need "
        "[notifications.graph] public_url and client_state",
    ),
    "webhook-without-http-port": Case(
        each(
            put("mailboxes.orders.source", "graph"),
            put("credentials.sales.scopes", "https://graph.microsoft.com/.default"),
            put("notifications.default", "push"),
            put(
                "notifications.graph.public_url", "https://listener.contoso.com/notifications/graph"
            ),
            put("notifications.graph.client_state", {"source": "env", "name": "CLIENT_STATE"}),
        ),
        "service.http_port",
        None,
        "on this service's HTTP server (/notifications/graph): set http_port",
    ),
    "public-url-plain-http": Case(
        each(
            put(
                "notifications.graph.public_url", "http://listener.contoso.com/notifications/graph"
            ),
            put("notifications.graph.client_state", {"source": "env", "name": "CLIENT_STATE"}),
        ),
        "notifications.graph.public_url",
        "'http://listener.contoso.com/notifications/graph'",
        "public_url must use https",
    ),
    # --- missing mandatory fields and empty strings ---
    "missing-client-id": Case(
        drop("credentials.sales.client_id"),
        "credentials.sales.client_id",
        None,
        "required, but missing",
    ),
    "missing-token-endpoint": Case(
        drop("credentials.sales.token_endpoint"),
        "credentials.sales.token_endpoint",
        None,
        "required, but missing",
    ),
    "missing-address": Case(
        drop("mailboxes.orders.address"),
        "mailboxes.orders.address",
        None,
        "required, but missing",
    ),
    "missing-routes": Case(
        drop("mailboxes.orders.routes"),
        "mailboxes.orders.routes",
        None,
        "required, but missing",
    ),
    "empty-client-id": Case(
        put("credentials.sales.client_id", ""),
        "credentials.sales.client_id",
        "''",
        "must not be empty",
    ),
    "empty-folder": Case(
        put("mailboxes.orders.folder", ""), "mailboxes.orders.folder", "''", "must not be empty"
    ),
    "empty-address": Case(
        put("mailboxes.orders.address", "  "),
        "mailboxes.orders.address",
        "'  '",
        "must be an email address",
    ),
    "empty-scopes": Case(
        put("credentials.sales.scopes", []),
        "credentials.sales.scopes",
        "a list",
        "at least one scope",
    ),
    # --- endpoints ---
    "http-ews-endpoint-remote": Case(
        put("mailboxes.orders.endpoint", "http://mail.contoso.com/EWS/Exchange.asmx"),
        "mailboxes.orders.endpoint",
        "'http://mail.contoso.com/EWS/Exchange.asmx'",
        "plain http is accepted only for loopback hosts",
    ),
    "http-token-endpoint-remote": Case(
        put("credentials.sales.token_endpoint", "http://login.example.com/t/oauth2/v2.0/token"),
        "credentials.sales.token_endpoint",
        "'http://login.example.com/t/oauth2/v2.0/token'",
        "plain http is accepted only for loopback hosts",
    ),
    "endpoint-not-a-url": Case(
        put("mailboxes.orders.endpoint", "outlook.office365.com"),
        "mailboxes.orders.endpoint",
        "'outlook.office365.com'",
        "must be an https URL",
    ),
    # --- schedules, routes, actions ---
    "bad-cron": Case(
        put("mailboxes.orders.cron", "every 5 minutes"),
        "mailboxes.orders.cron",
        "'every 5 minutes'",
        "5-field crontab",
    ),
    "cron-out-of-range": Case(
        put("mailboxes.orders.cron", "61 * * * *"),
        "mailboxes.orders.cron",
        "'61 * * * *'",
        "5-field crontab",
    ),
    "bad-subject-regex": Case(
        put("mailboxes.orders.routes", [{"subject": "order (\\d+", "handlers": ["archive"]}]),
        "mailboxes.orders.routes.0.subject",
        "'order (\\\\d+'",
        "invalid regular expression",
    ),
    "bad-header-regex": Case(
        put(
            "mailboxes.orders.routes",
            [{"header": {"name": "X-Prio", "regex": "[1-"}, "handlers": ["archive"]}],
        ),
        "mailboxes.orders.routes.0.header",
        None,
        "invalid regular expression",
    ),
    "unknown-after-success": Case(
        put("mailboxes.orders.after_success", "archive"),
        "mailboxes.orders.after_success",
        "'archive'",
        "expected one of 'mark_read'",
    ),
    "move-without-folder": Case(
        put("mailboxes.orders.after_success", "move:"),
        "mailboxes.orders.after_success",
        "'move:'",
        "needs a folder path",
    ),
    "dead-letter-delete": Case(
        put("mailboxes.orders.on_failure", {"max_attempts": 3, "dead_letter": "delete"}),
        "mailboxes.orders.on_failure.dead_letter",
        "'delete'",
        "expected one of 'none', 'move:…'",
    ),
    # --- secrets ---
    "secret-as-plain-string-is-masked": Case(
        put("credentials.sales.secret", SECRET),
        "credentials.sales.secret",
        "'**********'",
        "must be a table saying where the secret is, e.g. { source = ",
    ),
    "unknown-secret-source-is-masked": Case(
        put("credentials.sales.secret", {"source": "keyring", "value": SECRET}),
        "credentials.sales.secret",
        None,
        "unknown source 'keyring'",
    ),
    "secret-and-certificate": Case(
        put("credentials.sales.certificate", {"private_key": "k.pem", "certificate": "c.pem"}),
        "credentials.sales",
        None,
        "exactly one of 'secret'",
    ),
    # --- the environment ---
    "env-bad-batch-size": Case(
        None,
        "mailboxes.orders.batch_size",
        "'lots'",
        "valid integer",
        env={"EWS_LISTENER_MAILBOXES__ORDERS__BATCH_SIZE": "lots"},
        env_var="EWS_LISTENER_MAILBOXES__ORDERS__BATCH_SIZE",
    ),
    "env-bad-auth-method": Case(
        None,
        "credentials.sales.auth_method",
        "'digest'",
        "'basic' or 'body'",
        env={"EWS_LISTENER_CREDENTIALS__SALES__AUTH_METHOD": "digest"},
        env_var="EWS_LISTENER_CREDENTIALS__SALES__AUTH_METHOD",
    ),
    "env-unknown-section": Case(
        None,
        "mailbox",
        None,
        "unknown section",
        env={"EWS_LISTENER_MAILBOX__ORDERS__FOLDER": "Inbox"},
        env_var="EWS_LISTENER_MAILBOX__ORDERS__FOLDER",
    ),
    "env-secret-value-is-masked": Case(
        None,
        "credentials.sales.secret",
        None,
        "unknown source",
        env={
            "EWS_LISTENER_CREDENTIALS__SALES__SECRET": '{"source": "vault", "value": "'
            + SECRET
            + '"}'
        },
        env_var="EWS_LISTENER_CREDENTIALS__SALES__SECRET",
    ),
    # --- the file itself ---
    "toml-syntax": Case(
        None,
        "",
        None,
        "invalid TOML: Expected '=' after a key in a key/value pair (at line 3, column 8)",
        raw='[credentials.sales]\nclient_id = "x"\nscopes "a"\n',
    ),
    "upper-case-name": Case(
        put("handlers.Archive", {"type": "log"}),
        "handlers.Archive",
        None,
        "names must be lower-case",
    ),
}


def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EWS_LISTENER_* variable of the machine may leak into a case."""
    for name in list(os.environ):
        if name.upper().startswith("EWS_LISTENER_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / "listener.toml"
    if case.raw is not None:
        path.write_text(case.raw)
        return path
    data = base_config()
    if case.mutate is not None:
        case.mutate(data)
    path.write_text(to_toml(data))
    return path


def _issue_line(output: str, location: str) -> str:
    """The issue line naming ``location`` (exactly that path, not a longer one)."""
    pattern = re.compile(rf"(?m)^  - .*?: {re.escape(location)}: .*$")
    found = pattern.findall(output)
    assert found, f"no issue names {location!r}:\n{output}"
    return str(found[0])


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_configuration_is_named_precisely(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config exits 78 naming file (or variable), field path, shown value and expectation."""
    case = CASES[name]
    _clean_env(monkeypatch)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    path = _write(tmp_path, case)
    result = check_config(path, capsys)
    assert result.code == EXIT_CONFIG, result.output
    assert re.match(r"\d+ configuration problems?:", result.output), result.output
    if case.location:
        line = _issue_line(result.output, case.location)
    else:
        line = next(ln for ln in result.output.splitlines() if ln.startswith("  - "))
    if case.env_var:
        assert f"environment variable {case.env_var}" in line, line
    else:
        assert line.startswith(f"  - {path}: "), line
    assert case.expected in line, line
    if case.value is not None:
        assert line.endswith(f"(got {case.value})"), line
    assert SECRET not in result.output


def test_every_case_is_a_different_mistake() -> None:
    """The corpus has at least 30 configuration cases and no two are the same mistake."""
    assert len(CASES) >= 30
    keys = {(c.location, c.value, c.expected, tuple(c.env)) for c in CASES.values()}
    assert len(keys) == len(CASES)


def test_missing_file_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration file that does not exist is exit 78 with its path and how to point at one."""
    path = tmp_path / "nope.toml"
    result = check_config(path, capsys)
    assert result.code == EXIT_CONFIG
    assert f"{path}: the configuration file does not exist" in result.output
    assert "--config" in result.output


def test_many_mistakes_are_all_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six mistakes in one file are six issue lines, not just the first one found."""
    _clean_env(monkeypatch)
    data = base_config()
    for mutate in (
        put("mailboxes.orders.interval", "soon"),
        put("mailboxes.orders.batch_size", 0),
        put("credentials.sales.max_connections", 99),
        put("credentials.sales.client_secret", SECRET),
        put("mailboxes.orders.after_success", "archive"),
        put("handlers.archive.colour", "blue"),
    ):
        mutate(data)
    path = tmp_path / "listener.toml"
    path.write_text(to_toml(data))
    result = check_config(path, capsys)
    assert result.code == EXIT_CONFIG
    assert result.output.startswith("6 configuration problems:"), result.output
    assert SECRET not in result.output


def test_console_script_exits_78_on_stderr(tmp_path: Path) -> None:
    """The real command line prints the issues on stderr, nothing on stdout, and exits 78."""
    data = base_config()
    put("mailboxes.orders.batch_size", 1000)(data)
    path = tmp_path / "listener.toml"
    path.write_text(to_toml(data))
    done = subprocess.run(
        [sys.executable, "-m", "listener", "check-config", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_CONFIG
    assert done.stdout == ""
    assert f"{path}: mailboxes.orders.batch_size: " in done.stderr
    assert "(got 1000)" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["once", "run"])
def test_broken_configuration_touches_no_state_and_loses_no_mail(
    world: World, command: str
) -> None:
    """once and run exit 78 at once, create no state, leave the mail; fixed, once hands it over."""
    world.ews.add_mailbox("orders@contoso.com")
    world.deliver("orders@contoso.com", "order 1")
    broken = world.config(
        {"orders": {"address": "orders@contoso.com", "credential": "sales", "start_from": "all"}},
        extra='[handlers.extra]\ntype = "log"\nlevel = "loud"\n',
    )
    done = world.cli(command, "--config", str(broken), timeout=60)
    assert done.returncode == EXIT_CONFIG, done.stdout + done.stderr
    assert f"{broken}: handlers.extra.level: " in done.stderr
    assert "(got 'loud')" in done.stderr
    assert not world.state.exists()
    assert world.tokens.request_count() == 0
    assert [i.is_read for i in world.ews.items("orders@contoso.com")] == [False]
    fixed = world.config(
        {"orders": {"address": "orders@contoso.com", "credential": "sales", "start_from": "all"}}
    )
    after = run_once(world, fixed)
    assert after.code == EXIT_OK, after.log
    assert [r["subject"] for r in world.receipts_log()] == ["order 1"]


# --- what the first version of this corpus found, since fixed -------------------------------


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(
            n,
            marks=(),
        )
        for n in sorted(CASES)
        if CASES[n].raw is None
    ],
)
def test_one_mistake_is_one_issue(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configuration with exactly one mistake gets exactly one issue (no follow-on noise)."""
    case = CASES[name]
    _clean_env(monkeypatch)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    result = check_config(_write(tmp_path, case), capsys)
    assert result.code == EXIT_CONFIG
    assert result.output.startswith("1 configuration problem:"), result.output


_LEAKS = {
    "webhook-url-query": (
        {"type": "webhook", "url": f"http://hooks.example.com/trigger?sig={SECRET}"},
        "handlers.hook.url",
    ),
    "webhook-header-value": (
        {"type": "webhook", "url": "https://hooks.example.com/x", "headers": {"X-Api-Key": 271828}},
        "handlers.hook.headers.X-Api-Key",
    ),
    "command-env-value": (
        {"type": "command", "argv": ["true"], "env": {"API_PIN": 271828}},
        "handlers.hook.env.API_PIN",
    ),
}


@pytest.mark.parametrize("name", sorted(_LEAKS))
def test_handler_secrets_are_masked_in_issues(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook URL's query, a webhook header value and a command env value never show."""
    _clean_env(monkeypatch)
    table, location = _LEAKS[name]
    data = base_config()
    put("handlers.hook", table)(data)
    path = tmp_path / "listener.toml"
    path.write_text(to_toml(data))
    result = check_config(path, capsys)
    assert result.code == EXIT_CONFIG
    line = _issue_line(result.output, location)
    assert SECRET not in line, line
    assert "271828" not in line, line


def test_state_busy_timeout_named_by_the_lock_error_is_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key the locked-database error tells people to raise is accepted by check-config."""
    _clean_env(monkeypatch)
    data = base_config()
    put("state.busy_timeout", 30)(data)
    path = tmp_path / "listener.toml"
    path.write_text(to_toml(data))
    result = check_config(path, capsys)
    assert result.code == EXIT_OK, result.output
