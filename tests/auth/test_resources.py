"""The scope rules (listener.auth.resources): which resource a scope names, which scopes a
mailbox's token is requested with."""

from __future__ import annotations

import pytest

from listener.auth.resources import (
    EXCHANGE_APP_ID,
    GRAPH_APP_ID,
    ResourceMismatch,
    Selection,
    by_resource,
    exchange_online_host,
    is_graph,
    resource_of,
    select,
)

GRAPH = "https://graph.microsoft.com/.default"
EXO = "https://outlook.office365.com/.default"
EWS = "https://outlook.office365.com/EWS/Exchange.asmx"
GRAPH_URL = "https://graph.microsoft.com/v1.0"


@pytest.mark.parametrize(
    ("scope", "resource"),
    [
        (GRAPH, "https://graph.microsoft.com"),
        ("https://graph.microsoft.com/Mail.Read", "https://graph.microsoft.com"),
        ("https://Outlook.Office365.com/.default", "https://outlook.office365.com"),
        (f"{GRAPH_APP_ID}/.default", GRAPH_APP_ID),
        (f"{EXCHANGE_APP_ID}/.default", EXCHANGE_APP_ID),
        (
            "https://analysis.windows.net/powerbi/api/.default",
            "https://analysis.windows.net/powerbi/api",
        ),
        ("api://contoso-ews/.default", "api://contoso-ews"),
        ("offline_access", None),
        ("mail.read", None),
    ],
)
def test_resource_of(scope: str, resource: str | None) -> None:
    """A scope's resource is the scope up to its last '/', lower-cased; words name none."""
    assert resource_of(scope) == resource


@pytest.mark.parametrize(
    ("resource", "graph"),
    [
        ("https://graph.microsoft.com", True),
        ("https://graph.microsoft.us", True),
        ("https://dod-graph.microsoft.us", True),
        ("https://microsoftgraph.chinacloudapi.cn", True),
        ("https://graph.microsoft.de", True),
        (GRAPH_APP_ID, True),
        ("https://outlook.office365.com", False),
        (EXCHANGE_APP_ID, False),
        ("https://graph.windows.net", False),  # Azure AD Graph, retired: not Microsoft Graph
    ],
)
def test_is_graph(resource: str, graph: bool) -> None:
    """Graph is its hosts in every cloud and its app id."""
    assert is_graph(resource) is graph


def test_by_resource_keeps_order() -> None:
    """Scopes grouped by resource, in the order given; words under None."""
    scopes = (GRAPH, EXO, "offline_access", "https://graph.microsoft.com/Mail.Read")
    assert by_resource(scopes) == {
        "https://graph.microsoft.com": (GRAPH, "https://graph.microsoft.com/Mail.Read"),
        "https://outlook.office365.com": (EXO,),
        None: ("offline_access",),
    }


@pytest.mark.parametrize(
    "scopes",
    [(EXO,), (EXO, "https://mail.contoso.com/.default"), ("mail.read", "mail.write"), ("x",)],
)
def test_no_graph_credential_serves_ews_as_before(scopes: tuple[str, ...]) -> None:
    """A credential naming no Graph resource: all its scopes, whatever they are."""
    assert select(scopes, "ews", EWS) == Selection(None, scopes)


def test_mixed_credential_splits_by_source() -> None:
    """Graph mailboxes get Graph's scopes, EWS ones the others; words go with both."""
    scopes = (GRAPH, EXO, "offline_access")
    assert select(scopes, "graph", GRAPH_URL) == Selection(
        "https://graph.microsoft.com", (GRAPH, "offline_access")
    )
    assert select(scopes, "ews", EWS) == Selection(
        "https://outlook.office365.com", (EXO, "offline_access")
    )


def test_one_candidate_whatever_the_host() -> None:
    """One Graph (or one Exchange) resource serves the emulator's loopback endpoint too."""
    scopes = (GRAPH, EXO)
    assert select(scopes, "graph", "https://127.0.0.1:8443/v1.0").scopes == (GRAPH,)
    assert select(scopes, "ews", "https://127.0.0.1:8443/EWS/Exchange.asmx").scopes == (EXO,)


def test_guid_forms() -> None:
    """The app-id forms are Graph and Exchange Online."""
    scopes = (f"{GRAPH_APP_ID}/.default", f"{EXCHANGE_APP_ID}/.default")
    assert select(scopes, "graph", GRAPH_URL).resource == GRAPH_APP_ID
    assert select(scopes, "ews", EWS).resource == EXCHANGE_APP_ID


def test_several_candidates_pick_by_host() -> None:
    """Several non-Graph resources: the one whose host is the endpoint's (GUID: any EXO host)."""
    onprem = "https://mail.contoso.com/.default"
    scopes = (GRAPH, f"{EXCHANGE_APP_ID}/.default", onprem)
    assert select(scopes, "ews", EWS).resource == EXCHANGE_APP_ID
    assert select(scopes, "ews", "https://mail.contoso.com/EWS/Exchange.asmx").scopes == (onprem,)
    with pytest.raises(ResourceMismatch, match=r"'ews\.fabrikam\.com'"):
        select(scopes, "ews", "https://ews.fabrikam.com/EWS/Exchange.asmx")
    clouds = (GRAPH, "https://graph.microsoft.us/.default", EXO)
    assert select(clouds, "graph", "https://graph.microsoft.us/v1.0").resource == (
        "https://graph.microsoft.us"
    )


@pytest.mark.parametrize(
    ("scopes", "source", "endpoint", "fix"),
    [
        ((EXO,), "graph", GRAPH_URL, GRAPH),
        (
            (EXO,),
            "graph",
            "https://dod-graph.microsoft.us/v1.0",
            "https://dod-graph.microsoft.us/.default",
        ),
        ((GRAPH,), "ews", EWS, EXO),
        (
            (GRAPH,),
            "ews",
            "https://mail.contoso.com/EWS/Exchange.asmx",
            "https://mail.contoso.com/.default",
        ),
        ((GRAPH,), "ews", "https://127.0.0.1:8443/EWS/Exchange.asmx", EXO),
    ],
)
def test_mismatch_names_credential_and_fix(
    scopes: tuple[str, ...], source: str, endpoint: str, fix: str
) -> None:
    """The error names credentials.NAME.scopes as given and the scope to add."""
    with pytest.raises(ResourceMismatch) as info:
        select(scopes, source, endpoint, credential="app")  # type: ignore[arg-type]
    assert f"credentials.app.scopes ({scopes[0]!r})" in str(info.value)
    assert f"add {fix!r}" in str(info.value)


@pytest.mark.parametrize(
    ("endpoint", "online"),
    [
        (EWS, True),
        ("https://outlook.office365.us/EWS/Exchange.asmx", True),
        ("https://partner.outlook.cn/EWS/Exchange.asmx", True),
        ("https://outlook.office.de/EWS/Exchange.asmx", True),
        ("https://mail.contoso.com/EWS/Exchange.asmx", False),
        ("https://127.0.0.1:8443/EWS/Exchange.asmx", False),
    ],
)
def test_exchange_online_hosts(endpoint: str, online: bool) -> None:
    """Exchange Online in every cloud, by host; anything else is on-premises."""
    assert exchange_online_host(endpoint) is online
