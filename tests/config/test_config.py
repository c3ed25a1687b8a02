"""Loading and validating the configuration: every mistake reported, precisely."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from listener.config import Action, ConfigError, ConfigIssue, Settings, load_settings
from listener.config.models import notification_mode
from listener.secrets import EnvSecret, InlineSecret

EXAMPLE = Path(__file__).parents[2] / "config" / "example.toml"
MS = "https://login.microsoftonline.com/contoso/oauth2/v2.0/token"

BASE = f"""
[credentials.sales]
client_id = "app-1"
token_endpoint = "{MS}"
scopes = "https://outlook.office365.com/.default"
secret = {{ source = "inline", value = "hunter2-secret" }}

[mailboxes.orders]
address = "orders@contoso.com"
credential = "sales"
routes = [{{ handlers = ["audit"] }}]

[handlers.audit]
type = "log"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "listener.toml"
    path.write_text(dedent(text))
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, text), env=env or {})


def issues(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[ConfigIssue]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return list(info.value.issues)


def one(found: list[ConfigIssue], location: str) -> ConfigIssue:
    matching = [issue for issue in found if issue.location == location]
    assert matching, f"no issue at {location}: {[str(i) for i in found]}"
    return matching[0]


def test_example_configuration_loads() -> None:
    """config/example.toml is valid and shows every credential form."""
    settings = load_settings(EXAMPLE, env={})
    sources = {
        type(c.secret).__name__ for c in settings.credentials.values() if c.secret is not None
    }
    assert sources == {
        "EnvSecret",
        "FileSecret",
        "InlineSecret",
        "AzureKeyVaultSecret",
        "HashicorpVaultSecret",
    }
    assert any(c.certificate is not None for c in settings.credentials.values())
    assert {c.auth_method for c in settings.credentials.values()} == {"basic", "body"}


def test_minimal_configuration_defaults(tmp_path: Path) -> None:
    """Defaults: basic auth, form encoding, mark_read, inbox, 60 s, state under ./var."""
    settings = load(tmp_path, BASE)
    credential = settings.credentials["sales"]
    assert credential.auth_method == "basic"
    assert credential.basic_encoding == "form"
    assert credential.max_connections == 4
    assert credential.scopes == ("https://outlook.office365.com/.default",)
    mailbox = settings.mailboxes["orders"]
    assert (mailbox.folder, mailbox.interval, mailbox.start_from) == ("inbox", 60.0, "new")
    assert mailbox.after_success == Action(kind="mark_read")
    assert mailbox.endpoint == "https://outlook.office365.com/EWS/Exchange.asmx"
    assert settings.state.url == "sqlite:///./var/state.db"


def test_state_directory_from_systemd(tmp_path: Path) -> None:
    """With $STATE_DIRECTORY the default database lives there."""
    settings = load(tmp_path, BASE, env={"STATE_DIRECTORY": "/var/lib/ews-listener"})
    assert settings.state.url == "sqlite:////var/lib/ews-listener/state.db"  # absolute path


def test_missing_field(tmp_path: Path) -> None:
    """A missing mandatory field names its dotted location."""
    found = issues(tmp_path, BASE.replace('client_id = "app-1"\n', ""))
    assert "required" in one(found, "credentials.sales.client_id").message


def test_empty_string(tmp_path: Path) -> None:
    """An empty client_id is refused."""
    found = issues(tmp_path, BASE.replace('client_id = "app-1"', 'client_id = "  "'))
    assert "must not be empty" in one(found, "credentials.sales.client_id").message


def test_unknown_auth_method(tmp_path: Path) -> None:
    """An unknown auth_method lists the accepted ones."""
    text = BASE.replace('client_id = "app-1"', 'client_id = "app-1"\nauth_method = "digest"')
    issue = one(issues(tmp_path, text), "credentials.sales.auth_method")
    assert "'basic'" in issue.message
    assert issue.value == "'digest'"


@pytest.mark.parametrize(
    ("alias", "method"), [("client_secret_basic", "basic"), ("client_secret_post", "body")]
)
def test_auth_method_aliases(tmp_path: Path, alias: str, method: str) -> None:
    """RFC 7591 names are accepted as aliases."""
    text = BASE.replace('client_id = "app-1"', f'client_id = "app-1"\nauth_method = "{alias}"')
    assert load(tmp_path, text).credentials["sales"].auth_method == method


def test_http_endpoint_to_remote_host(tmp_path: Path) -> None:
    """Plain http is refused for a non-loopback token endpoint."""
    text = BASE.replace(MS, "http://login.example.com/t/oauth2/v2.0/token")
    assert "https" in one(issues(tmp_path, text), "credentials.sales.token_endpoint").message


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost", "[::1]:9000"])
def test_http_endpoint_to_loopback_is_accepted(tmp_path: Path, host: str) -> None:
    """Plain http is fine for loopback hosts (test servers)."""
    settings = load(tmp_path, BASE.replace(MS, f"http://{host}/token"))
    assert settings.credentials["sales"].token_endpoint.startswith("http://")


@pytest.mark.parametrize("scopes", ['""', "[]", '"   "'])
def test_empty_scopes(tmp_path: Path, scopes: str) -> None:
    """Empty scopes are refused with an example."""
    text = BASE.replace('scopes = "https://outlook.office365.com/.default"', f"scopes = {scopes}")
    assert ".default" in one(issues(tmp_path, text), "credentials.sales.scopes").message


def test_scopes_string_or_list_case_kept(tmp_path: Path) -> None:
    """A space-delimited string splits; case is preserved."""
    text = BASE.replace(
        'scopes = "https://outlook.office365.com/.default"',
        'scopes = "Mail.Read  EWS.AccessAsUser"',
    )
    assert load(tmp_path, text).credentials["sales"].scopes == ("Mail.Read", "EWS.AccessAsUser")


def test_unknown_secret_source(tmp_path: Path) -> None:
    """An unknown secret source lists the known ones and masks the value."""
    text = BASE.replace('source = "inline"', 'source = "keychain"')
    issue = one(issues(tmp_path, text), "credentials.sales.secret")
    assert "hashicorp_vault" in issue.message
    assert "hunter2" not in str(issue)


def test_secret_and_certificate_both(tmp_path: Path) -> None:
    """A credential needs exactly one of secret or certificate."""
    text = BASE.replace(
        "[mailboxes.orders]",
        'certificate = { private_key = "k.pem", certificate = "c.pem" }\n[mailboxes.orders]',
    )
    assert "exactly one" in one(issues(tmp_path, text), "credentials.sales").message


def test_secret_values_are_masked_in_issues(tmp_path: Path) -> None:
    """An invalid value under 'secret' is shown masked."""
    text = BASE.replace('value = "hunter2-secret"', 'value = "hunter2-secret", extra = "hunter3"')
    found = issues(tmp_path, text)
    assert all("hunter" not in str(issue) for issue in found)


def test_unknown_key(tmp_path: Path) -> None:
    """Unknown keys are errors, at their location."""
    text = BASE.replace('type = "log"', 'type = "log"\ncolour = "red"')
    assert "unknown key" in one(issues(tmp_path, text), "handlers.audit.colour").message


def test_unknown_section(tmp_path: Path) -> None:
    """An unknown top-level table is an error."""
    assert (
        "unknown section" in one(issues(tmp_path, BASE + "\n[mailbox]\nx = 1\n"), "mailbox").message
    )


def test_env_override(tmp_path: Path) -> None:
    """EWS_LISTENER_CREDENTIALS__SALES__CLIENT_ID overrides the file, case-insensitively."""
    env = {
        "EWS_LISTENER_CREDENTIALS__SALES__CLIENT_ID": "from-env",
        "ews_listener_credentials__sales__secret__value": "env-secret",
        "EWS_LISTENER_CONFIG": "/ignored",
    }
    credential = load(tmp_path, BASE, env).credentials["sales"]
    assert credential.client_id == "from-env"
    assert isinstance(credential.secret, InlineSecret)
    assert credential.secret.read().get_secret_value() == "env-secret"


def test_env_can_switch_secret_source(tmp_path: Path) -> None:
    """A whole secret can come from the environment as nested variables."""
    env = {
        "EWS_LISTENER_CREDENTIALS__SALES__SECRET__SOURCE": "env",
        "EWS_LISTENER_CREDENTIALS__SALES__SECRET__NAME": "SALES_SECRET",
    }
    text = BASE.replace('secret = { source = "inline", value = "hunter2-secret" }\n', "")
    assert isinstance(load(tmp_path, text, env).credentials["sales"].secret, EnvSecret)


def test_error_names_environment_variable(tmp_path: Path) -> None:
    """A bad value from the environment names the variable, not the file."""
    env = {"EWS_LISTENER_CREDENTIALS__SALES__TIMEOUT": "-1"}
    issue = one(issues(tmp_path, BASE, env), "credentials.sales.timeout")
    assert issue.env_var == "EWS_LISTENER_CREDENTIALS__SALES__TIMEOUT"
    assert "environment variable EWS_LISTENER_CREDENTIALS__SALES__TIMEOUT" in str(issue)


def test_unknown_env_section(tmp_path: Path) -> None:
    """A variable with the prefix and an unknown section is reported."""
    found = issues(tmp_path, BASE, {"EWS_LISTENER_CREDENTIAL__SALES__TIMEOUT": "3"})
    assert found[0].env_var == "EWS_LISTENER_CREDENTIAL__SALES__TIMEOUT"


def test_upper_case_name_explains_case_insensitivity(tmp_path: Path) -> None:
    """Names must be lower-case, and the error says why."""
    found = issues(tmp_path, BASE.replace("[credentials.sales]", "[credentials.Sales]"))
    assert "case-insensitively" in one(found, "credentials.Sales").message


def test_toml_syntax_error_names_line(tmp_path: Path) -> None:
    """A TOML syntax error names the line."""
    found = issues(tmp_path, BASE + "\n[handlers\n")
    assert "line" in found[0].message
    assert found[0].file is not None


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is one clear error."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def test_missing_credential_and_handler_references(tmp_path: Path) -> None:
    """A mailbox naming an unknown credential or handler is reported with the known names."""
    text = BASE.replace('credential = "sales"', 'credential = "slaes"').replace(
        'handlers = ["audit"]', 'handlers = ["audit", "archive"]'
    )
    found = issues(tmp_path, text)
    assert "'slaes'" in one(found, "mailboxes.orders.credential").message
    assert "'archive'" in one(found, "mailboxes.orders.routes.0.handlers").message


def test_duplicate_mailbox_names_both(tmp_path: Path) -> None:
    """The same address + folder + endpoint under two names is an error naming both."""
    text = BASE + dedent(
        """
        [mailboxes.orders2]
        address = "Orders@contoso.com"
        credential = "sales"
        folder = "Inbox"
        routes = [{ handlers = ["audit"] }]
        """
    ).replace('folder = "Inbox"', 'folder = "inbox"')
    message = one(issues(tmp_path, text), "mailboxes.orders2").message
    assert "'orders'" in message
    assert "'orders2'" in message


def test_interval_and_cron_exclusive(tmp_path: Path) -> None:
    """interval and cron together are refused; a bad crontab is explained."""
    both = BASE.replace(
        'credential = "sales"', 'credential = "sales"\ninterval = 5\ncron = "* * * * *"'
    )
    assert "not both" in one(issues(tmp_path, both), "mailboxes.orders").message
    bad = BASE.replace('credential = "sales"', 'credential = "sales"\ncron = "every minute"')
    assert "crontab" in one(issues(tmp_path, bad), "mailboxes.orders.cron").message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mark_read", Action(kind="mark_read")),
        ("none", Action(kind="none")),
        ("delete", Action(kind="delete")),
        ("move:Inbox/Done", Action(kind="move", argument="Inbox/Done")),
        ("categorize:Handled", Action(kind="categorize", argument="Handled")),
    ],
)
def test_after_success_forms(tmp_path: Path, text: str, expected: Action) -> None:
    """after_success parses into Action(kind, argument)."""
    config = BASE.replace('credential = "sales"', f'credential = "sales"\nafter_success = "{text}"')
    assert load(tmp_path, config).mailboxes["orders"].after_success == expected


@pytest.mark.parametrize("text", ["move:", "explode", "delete:now", "categorize: "])
def test_after_success_bad(tmp_path: Path, text: str) -> None:
    """Malformed actions are refused."""
    config = BASE.replace('credential = "sales"', f'credential = "sales"\nafter_success = "{text}"')
    assert one(issues(tmp_path, config), "mailboxes.orders.after_success")


def test_dead_letter_only_none_or_move(tmp_path: Path) -> None:
    """on_failure.dead_letter accepts none or move only."""
    config = BASE + '\n[mailboxes.orders.on_failure]\ndead_letter = "delete"\n'
    assert one(issues(tmp_path, config), "mailboxes.orders.on_failure.dead_letter")
    ok = BASE + '\n[mailboxes.orders.on_failure]\ndead_letter = "move:Failed"\n'
    failure = load(tmp_path, ok).mailboxes["orders"].on_failure
    assert failure.dead_letter == Action(kind="move", argument="Failed")


def test_five_mistakes_all_reported(tmp_path: Path) -> None:
    """Five different mistakes give five issues."""
    text = (
        BASE.replace('client_id = "app-1"', 'client_id = ""\nauth_method = "digest"')
        .replace(MS, "http://example.com/token")
        .replace('credential = "sales"', 'credential = "nope"')
        .replace('type = "log"', 'type = "log"\nbogus = 1')
    )
    found = issues(tmp_path, text)
    locations = {issue.location for issue in found}
    assert locations >= {
        "credentials.sales.client_id",
        "credentials.sales.auth_method",
        "credentials.sales.token_endpoint",
        "mailboxes.orders.credential",
        "handlers.audit.bogus",
    }


@pytest.mark.parametrize(
    ("endpoint", "extra", "provider"),
    [
        (MS, "", "oauth2"),
        (MS, 'auth_method = "body"', "msal"),
        ("https://127.0.0.1:8443/tenant-a/oauth2/v2.0/token", 'auth_method = "body"', "msal"),
        ("https://idp.example/token", 'auth_method = "body"', "oauth2"),
        (MS, 'provider = "oauth2"\nauth_method = "body"', "oauth2"),
    ],
)
def test_provider_resolution(tmp_path: Path, endpoint: str, extra: str, provider: str) -> None:
    """auto picks msal for Microsoft-shaped endpoints with body or certificate, else RFC 6749."""
    text = BASE.replace(MS, endpoint).replace(
        'client_id = "app-1"', f'client_id = "app-1"\n{extra}'
    )
    assert load(tmp_path, text).credentials["sales"].resolved_provider == provider


def test_msal_with_basic_is_refused(tmp_path: Path) -> None:
    """provider msal cannot send HTTP Basic; the error says what to do."""
    text = BASE.replace('client_id = "app-1"', 'client_id = "app-1"\nprovider = "msal"')
    assert "auth_method = 'body'" in one(issues(tmp_path, text), "credentials.sales").message


def test_authority_from_endpoint(tmp_path: Path) -> None:
    """The msal authority is https://host/{tenant}."""
    credential = load(tmp_path, BASE).credentials["sales"]
    assert credential.authority == "https://login.microsoftonline.com/contoso"
    assert credential.microsoft_tenant == "contoso"


def test_max_connections_bounds(tmp_path: Path) -> None:
    """max_connections is limited to Exchange's 27 concurrent requests."""
    text = BASE.replace('client_id = "app-1"', 'client_id = "app-1"\nmax_connections = 28')
    assert one(issues(tmp_path, text), "credentials.sales.max_connections")


def test_issue_text_shows_file_location_value_and_fix(tmp_path: Path) -> None:
    """An issue prints file, dotted path, value and what was expected."""
    path = write(tmp_path, BASE.replace(MS, "htp://x/token"))
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    text = str(info.value)
    assert f"{path}: credentials.sales.token_endpoint:" in text
    assert "'htp://x/token'" in text
    assert "https URL" in text


def test_secret_as_plain_string_explains_the_table(tmp_path: Path) -> None:
    """secret = "…" (a common mistake) explains the secret table and masks the value."""
    text = BASE.replace(
        'secret = { source = "inline", value = "hunter2-secret" }', 'secret = "hunter2-secret"'
    )
    issue = one(issues(tmp_path, text), "credentials.sales.secret")
    assert 'source = "env"' in issue.message
    assert "hunter2" not in str(issue)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://outlook.office365.com/.default", ("https://outlook.office365.com/.default",)),
        ('["a", "b"]', ("a", "b")),
        ("a b", ("a", "b")),
    ],
)
def test_env_scopes_plain_or_json(tmp_path: Path, value: str, expected: tuple[str, ...]) -> None:
    """Scopes from the environment may be a plain space-delimited string or a JSON list."""
    env = {"EWS_LISTENER_CREDENTIALS__SALES__SCOPES": value}
    assert load(tmp_path, BASE, env).credentials["sales"].scopes == expected


def test_settings_model_checks_references() -> None:
    """Settings built directly (not through load_settings) still checks cross-references."""
    with pytest.raises(ValueError, match="no credential named 'nope'"):
        Settings.model_validate(
            {
                "mailboxes": {
                    "m": {"address": "a@b.c", "credential": "nope", "routes": [{"handlers": ["h"]}]}
                },
                "handlers": {"h": {"type": "log"}},
            }
        )


def test_prefixed_variables_that_are_not_overrides_are_ignored(tmp_path: Path) -> None:
    """EWS_LISTENER_MAILBOX (set for command handlers) and similar are not configuration."""
    env = {"EWS_LISTENER_MAILBOX": "orders", "EWS_LISTENER_TEST_POSTGRES": "1"}
    assert load(tmp_path, BASE, env).mailboxes["orders"].credential == "sales"


def test_bad_route_is_one_issue(tmp_path: Path) -> None:
    """An invalid route is reported once, without a false 'at least 1 item' on the list."""
    text = BASE.replace('routes = [{ handlers = ["audit"] }]', "routes = [{ handlers = [] }]")
    found = issues(tmp_path, text)
    assert [i.location for i in found if i.location.startswith("mailboxes")] == [
        "mailboxes.orders.routes.0.handlers"
    ]


def test_empty_routes(tmp_path: Path) -> None:
    """An empty route list asks for at least one route."""
    text = BASE.replace('routes = [{ handlers = ["audit"] }]', "routes = []")
    assert "at least 1 item" in one(issues(tmp_path, text), "mailboxes.orders.routes").message


@pytest.mark.parametrize(
    ("value", "location", "hidden"),
    [
        ('"https://h.example/x?sig=S3CRET&v=1"', "x.url", "S3CRET"),
        ("{ X-Api-Key = 271828 }", "x.headers.X-Api-Key", "271828"),
        ("{ PIN = 271828 }", "x.env.PIN", "271828"),
    ],
)
def test_values_that_may_be_credentials_are_masked(
    tmp_path: Path, value: str, location: str, hidden: str
) -> None:
    """URL query values, header values and environment values are masked in issues."""
    key = location.split(".")[1]
    text = BASE.replace('type = "log"', f'type = "log"\n{key} = {value}')
    found = issues(tmp_path, text)
    assert found
    assert all(hidden not in str(issue) for issue in found)


def test_state_timeouts(tmp_path: Path) -> None:
    """[state] accepts busy_timeout and connect_timeout (named by the store's errors)."""
    settings = load(tmp_path, BASE + "\n[state]\nbusy_timeout = 30\nconnect_timeout = 3\n")
    assert (settings.state.busy_timeout, settings.state.connect_timeout) == (30.0, 3.0)


def test_ews_streaming_example_loads() -> None:
    """config/ews-streaming.toml is valid: push by default, one mailbox opting out."""
    settings = load_settings(EXAMPLE.with_name("ews-streaming.toml"), env={})
    modes = {
        name: notification_mode(settings.notifications, mailbox)
        for name, mailbox in settings.mailboxes.items()
    }
    assert modes == {"orders": "streaming", "invoices": "streaming", "archive": "off"}
    assert settings.notifications.ews.connection_minutes == 30
