"""A mailbox's source (EWS or Microsoft Graph): endpoint defaults, and scopes that must fit it."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.config import DEFAULT_EWS_ENDPOINT, DEFAULT_GRAPH_ENDPOINT, Settings
from tests.config.test_config import BASE, MS, issues, load, one

GRAPH = "https://graph.microsoft.com/.default"
EXO = "https://outlook.office365.com/.default"


def with_mailbox(lines: str, *, scopes: str = EXO) -> str:
    """BASE with ``lines`` added to [mailboxes.orders] and the credential's scopes replaced."""
    text = BASE.replace('scopes = "https://outlook.office365.com/.default"', f'scopes = "{scopes}"')
    return text.replace('credential = "sales"\n', f'credential = "sales"\n{lines}\n', 1)


def test_source_defaults_to_ews_and_its_endpoint(tmp_path: Path) -> None:
    """A mailbox without source is an EWS one at Exchange Online, as before."""
    mailbox = load(tmp_path, BASE).mailboxes["orders"]
    assert (mailbox.source, mailbox.endpoint) == ("ews", DEFAULT_EWS_ENDPOINT)


def test_graph_mailbox_gets_graph_endpoint(tmp_path: Path) -> None:
    """source = "graph" without endpoint is Graph's v1.0 service root."""
    text = with_mailbox('source = "graph"', scopes=GRAPH)
    mailbox = load(tmp_path, text).mailboxes["orders"]
    assert (mailbox.source, mailbox.endpoint) == ("graph", DEFAULT_GRAPH_ENDPOINT)


@pytest.mark.parametrize(
    "endpoint", ["https://graph.microsoft.us/v1.0", "https://127.0.0.1:8443/v1.0"]
)
def test_graph_endpoint_by_url(tmp_path: Path, endpoint: str) -> None:
    """National clouds and the emulator are given by URL."""
    text = with_mailbox(f'source = "graph"\nendpoint = "{endpoint}"', scopes=GRAPH)
    assert load(tmp_path, text).mailboxes["orders"].endpoint == endpoint


def test_unknown_source(tmp_path: Path) -> None:
    """Only ews and graph: one issue, at the field, with the value."""
    found = issues(tmp_path, with_mailbox('source = "imap"'))
    assert len(found) == 1, [str(i) for i in found]
    issue = one(found, "mailboxes.orders.source")
    assert issue.value == "'imap'"
    assert "'ews' or 'graph'" in issue.message


def test_version_refused_on_graph_mailbox(tmp_path: Path) -> None:
    """version pins an EWS server: refused on a Graph mailbox, naming the field and value."""
    text = with_mailbox('source = "graph"\nversion = "Exchange2016"', scopes=GRAPH)
    found = issues(tmp_path, text)
    issue = one(found, "mailboxes.orders.version")
    assert issue.value == "'Exchange2016'"
    assert "source is 'graph'" in issue.message
    assert "remove version" in issue.message
    assert str(tmp_path / "listener.toml") in str(issue)


def test_ews_url_on_graph_mailbox(tmp_path: Path) -> None:
    """An .asmx endpoint on a Graph mailbox says what Graph's endpoint looks like."""
    text = with_mailbox(f'source = "graph"\nendpoint = "{DEFAULT_EWS_ENDPOINT}"', scopes=GRAPH)
    issue = one(issues(tmp_path, text), "mailboxes.orders.endpoint")
    assert DEFAULT_GRAPH_ENDPOINT in issue.message
    assert issue.value == repr(DEFAULT_EWS_ENDPOINT)


def test_graph_url_on_ews_mailbox(tmp_path: Path) -> None:
    """A Graph endpoint without source = "graph" says to set it."""
    issue = one(
        issues(tmp_path, with_mailbox(f'endpoint = "{DEFAULT_GRAPH_ENDPOINT}"')),
        "mailboxes.orders.endpoint",
    )
    assert 'source = "graph"' in issue.message


def test_graph_mailbox_without_graph_scope(tmp_path: Path) -> None:
    """The mismatch is reported at the mailbox's source, naming the credential and the fix."""
    found = issues(tmp_path, with_mailbox('source = "graph"'))
    assert len(found) == 1, [str(i) for i in found]
    issue = one(found, "mailboxes.orders.source")
    assert issue.message == (
        "'graph' needs a Microsoft Graph token, but credentials.sales.scopes "
        f"({EXO!r}) names no Graph resource; add {GRAPH!r}"
    )
    assert str(issue).startswith(f"{tmp_path / 'listener.toml'}: mailboxes.orders.source: ")


def test_graph_scope_suggested_for_the_cloud(tmp_path: Path) -> None:
    """A US Government Graph endpoint gets the US Government Graph scope as the fix."""
    text = with_mailbox('source = "graph"\nendpoint = "https://graph.microsoft.us/v1.0"')
    issue = one(issues(tmp_path, text), "mailboxes.orders.source")
    assert "add 'https://graph.microsoft.us/.default'" in issue.message


def test_ews_mailbox_of_graph_only_credential(tmp_path: Path) -> None:
    """An EWS mailbox (the default) of a credential naming only Graph: add Exchange's scope."""
    issue = one(issues(tmp_path, with_mailbox("", scopes=GRAPH)), "mailboxes.orders.source")
    assert issue.message.startswith("'ews' (the default) needs an Exchange (EWS) token")
    assert f"add {EXO!r}" in issue.message
    assert 'set source = "graph"' in issue.message


def test_one_credential_serves_both_kinds(tmp_path: Path) -> None:
    """A credential naming Graph and Exchange Online serves a Graph and an EWS mailbox."""
    text = with_mailbox('source = "graph"', scopes=f"{GRAPH} {EXO}")
    text += (
        '\n[mailboxes.legacy]\naddress = "legacy@contoso.com"\ncredential = "sales"\n'
        'routes = [{ handlers = ["audit"] }]\n'
    )
    settings = load(tmp_path, text)
    assert settings.mailboxes["orders"].source == "graph"
    assert settings.mailboxes["legacy"].source == "ews"


def test_several_exchange_resources_pick_by_host(tmp_path: Path) -> None:
    """With Graph and two Exchange resources, the endpoint's host must pick one of them."""
    scopes = f"{GRAPH} {EXO} https://mail.contoso.com/.default"
    ok = with_mailbox('endpoint = "https://mail.contoso.com/EWS/Exchange.asmx"', scopes=scopes)
    assert load(tmp_path, ok).mailboxes["orders"].endpoint.startswith("https://mail.contoso")
    bad = with_mailbox('endpoint = "https://ews.fabrikam.com/EWS/Exchange.asmx"', scopes=scopes)
    issue = one(issues(tmp_path, bad), "mailboxes.orders.source")
    assert "name several" in issue.message
    assert "'ews.fabrikam.com'" in issue.message


def test_credential_without_graph_keeps_any_scopes(tmp_path: Path) -> None:
    """No Graph resource named: EWS mailboxes take the scopes as they are, whatever they are."""
    text = with_mailbox("", scopes=f"{EXO} https://mail.contoso.com/.default offline_access")
    assert load(tmp_path, text).mailboxes["orders"].source == "ews"


def test_watched_twice_uses_the_source_default_endpoint(tmp_path: Path) -> None:
    """Two Graph mailboxes on one folder, one with Graph's default endpoint spelled out."""
    text = with_mailbox('source = "graph"', scopes=GRAPH)
    text += (
        '\n[mailboxes.again]\nsource = "graph"\naddress = "orders@contoso.com"\n'
        f'credential = "sales"\nendpoint = "{DEFAULT_GRAPH_ENDPOINT}"\n'
        'routes = [{ handlers = ["audit"] }]\n'
    )
    issue = one(issues(tmp_path, text), "mailboxes.again")
    assert "both watch orders@contoso.com" in issue.message


def test_one_folder_over_both_protocols_is_refused(tmp_path: Path) -> None:
    """The same folder over EWS and over Graph: two cursors racing; moving is changing source."""
    text = with_mailbox("", scopes=f"{EXO} {GRAPH}")
    text += (
        '\n[mailboxes.graphed]\nsource = "graph"\naddress = "Orders@contoso.com"\n'
        'credential = "sales"\nroutes = [{ handlers = ["audit"] }]\n'
    )
    issue = one(issues(tmp_path, text), "mailboxes.graphed.source")
    assert "'orders' (ews) and 'graphed' (graph) both watch" in issue.message
    assert "change its source" in issue.message


def test_settings_model_checks_sources() -> None:
    """Settings built directly (not through load_settings) refuses the mismatch too."""
    data = {
        "credentials": {
            "sales": {
                "client_id": "x",
                "token_endpoint": MS,
                "scopes": [EXO],
                "secret": {"source": "inline", "value": "hunter2-secret"},
                "auth_method": "body",
            }
        },
        "mailboxes": {
            "orders": {
                "address": "orders@contoso.com",
                "credential": "sales",
                "source": "graph",
                "routes": [{"handlers": ["audit"]}],
            }
        },
        "handlers": {"audit": {"type": "log"}},
    }
    with pytest.raises(ValueError, match=r"mailboxes\.orders\.source: 'graph' needs"):
        Settings.model_validate(data)
