"""Which resource a scope is for, and which of a credential's scopes a mailbox's token needs.

Pure functions, no I/O; used by configuration validation (``listener.config``) and by the token
providers (``listener.auth.registry``), so that what ``check-config`` accepts is what is requested.

One app registration can serve EWS and Microsoft Graph mailboxes, but Entra issues a token for
one resource at a time: ``scope=https://graph.microsoft.com/.default
https://outlook.office365.com/.default`` is refused with AADSTS70011 ("The scope … is not
valid"; AADSTS28000 in the interactive flows). So a credential's ``scopes`` are grouped by
resource and a token is requested per resource with that resource's scopes only:

- a scope's resource is the scope up to its last ``/``: ``https://graph.microsoft.com/.default``
  → ``https://graph.microsoft.com``, ``00000003-0000-0000-c000-000000000000/.default`` → Graph's
  app id; a scope without ``/`` (``offline_access``, a custom server's ``mail.read``) names no
  resource and goes with every request;
- Graph resources are the Graph hosts of the Microsoft clouds and Graph's app id;
- a Graph mailbox takes the Graph resource's scopes, an EWS mailbox the other resources' (the one
  whose host is the endpoint's when there are several);
- a credential whose scopes name no Graph resource serves EWS mailboxes with all its scopes,
  exactly as before Graph sources existed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_EWS_RESOURCE",
    "DEFAULT_GRAPH_RESOURCE",
    "EXCHANGE_APP_ID",
    "EXCHANGE_ONLINE_HOSTS",
    "GRAPH_APP_ID",
    "GRAPH_HOSTS",
    "ResourceMismatch",
    "Selection",
    "Source",
    "by_resource",
    "exchange_online_host",
    "exchange_resource",
    "graph_host_for",
    "host_of",
    "is_graph",
    "resource_of",
    "select",
    "token_requests",
]

Source = Literal["ews", "graph"]

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
DEFAULT_GRAPH_RESOURCE = "https://graph.microsoft.com"
DEFAULT_EWS_RESOURCE = "https://outlook.office365.com"

#: Microsoft Graph in the global service and the national clouds (US Government L4 and L5/DoD,
#: China operated by 21Vianet, the retired Germany cloud).
GRAPH_HOSTS = frozenset(
    {
        "graph.microsoft.com",
        "graph.microsoft.us",
        "dod-graph.microsoft.us",
        "microsoftgraph.chinacloudapi.cn",
        "graph.microsoft.de",
    }
)
#: Exchange Online's EWS hosts, each with the Graph host of the same cloud.
EXCHANGE_ONLINE_HOSTS: dict[str, str] = {
    "outlook.office365.com": "graph.microsoft.com",
    "outlook.office.com": "graph.microsoft.com",
    "outlook.office365.us": "graph.microsoft.us",
    "outlook-dod.office365.us": "dod-graph.microsoft.us",
    "partner.outlook.cn": "microsoftgraph.chinacloudapi.cn",
    "outlook.office.de": "graph.microsoft.de",
}


class ResourceMismatch(ValueError):
    """A mailbox's source and its credential's scopes do not fit; the text says what to add.

    The text reads after the source: ``f"{source!r} {exc}"`` → "'graph' needs a Microsoft Graph
    token, but credentials.app.scopes (…) names no Graph resource; add '…'".
    """


@dataclass(frozen=True)
class Selection:
    """The scopes one mailbox's token is requested with.

    ``resource`` is the resource they name (None when the credential names no Graph resource and
    serves EWS with all its scopes, as it always did).
    """

    resource: str | None
    scopes: tuple[str, ...]


def resource_of(scope: str) -> str | None:
    """The resource ``scope`` is for, lower-cased; None for a word like ``offline_access``."""
    head, sep, _ = scope.rpartition("/")
    if not sep or not head.rstrip("/"):
        return None
    return head.rstrip("/").lower()


def host_of(url: str) -> str:
    """The lower-case host of a URL ('' when there is none)."""
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def is_graph(resource: str) -> bool:
    """True for Microsoft Graph (a Graph host of any cloud, or Graph's app id)."""
    return resource.lower() == GRAPH_APP_ID or host_of(resource) in GRAPH_HOSTS


def exchange_online_host(endpoint: str) -> bool:
    """True when an EWS ``endpoint`` is Exchange Online's (any cloud), not an on-premises one."""
    return host_of(endpoint) in EXCHANGE_ONLINE_HOSTS


def graph_host_for(endpoint: str) -> str:
    """The Graph host of the cloud an Exchange Online (or Graph) endpoint belongs to."""
    host = host_of(endpoint)
    if host in GRAPH_HOSTS:
        return host
    return EXCHANGE_ONLINE_HOSTS.get(host, "graph.microsoft.com")


def by_resource(scopes: Iterable[str]) -> dict[str | None, tuple[str, ...]]:
    """The scopes grouped by resource, in the order given; None holds the resource-less ones."""
    groups: dict[str | None, list[str]] = {}
    for scope in scopes:
        groups.setdefault(resource_of(scope), []).append(scope)
    return {resource: tuple(group) for resource, group in groups.items()}


def token_requests(scopes: Sequence[str]) -> list[Selection]:
    """The token requests a credential's mailboxes can make: one with all the scopes when they
    name no Graph resource (as EWS mailboxes ask), else one per resource."""
    groups = by_resource(scopes)
    words = groups.pop(None, ())
    if not any(r is not None and is_graph(r) for r in groups):
        return [Selection(None, tuple(scopes))]
    return [Selection(r, group + words) for r, group in groups.items() if r is not None]


def exchange_resource(resource: str) -> bool:
    """True for Exchange Online's resource (an Exchange Online host, or its app id)."""
    return resource.lower() == EXCHANGE_APP_ID or host_of(resource) in EXCHANGE_ONLINE_HOSTS


def _hosts(resource: str) -> frozenset[str]:
    if resource == GRAPH_APP_ID:
        return GRAPH_HOSTS
    if resource == EXCHANGE_APP_ID:
        return frozenset(EXCHANGE_ONLINE_HOSTS)
    host = host_of(resource)
    return frozenset({host}) if host else frozenset()


def _quoted(scopes: Sequence[str]) -> str:
    return ", ".join(repr(s) for s in scopes)


def _ews_suggestion(endpoint: str) -> str:
    """``https://{endpoint host}/.default``; Exchange Online's for the emulator on loopback."""
    host = host_of(endpoint)
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not host or loopback:
        return f"{DEFAULT_EWS_RESOURCE}/.default"
    return f"https://{host}/.default"


def select(
    scopes: Sequence[str], source: Source, endpoint: str, *, credential: str = "?"
) -> Selection:
    """The scopes a mailbox of ``source`` at ``endpoint`` needs from a credential's ``scopes``.

    Raises ``ResourceMismatch`` naming ``credentials.{credential}.scopes`` and what to add when
    they cannot serve it (or name several candidates and the endpoint's host picks none).
    """
    groups = by_resource(scopes)
    words = groups.pop(None, ())
    graph = [r for r in groups if r is not None and is_graph(r)]
    where = f"credentials.{credential}.scopes ({_quoted(scopes)})"
    if source == "ews" and not graph:
        return Selection(None, tuple(scopes))
    if source == "graph":
        candidates, kind = graph, "Graph"
        if not graph:
            wanted = f"https://{graph_host_for(endpoint)}/.default"
            raise ResourceMismatch(
                f"needs a Microsoft Graph token, but {where} names no Graph resource; "
                f"add {wanted!r}"
            )
    else:
        candidates = [r for r in groups if r is not None and r not in graph]
        kind = "non-Graph"
        if not candidates:
            raise ResourceMismatch(
                f"needs an Exchange (EWS) token, but {where} names only Microsoft Graph; "
                f'add {_ews_suggestion(endpoint)!r}, or set source = "graph"'
            )
    chosen = candidates[0]
    if len(candidates) > 1:
        host = host_of(endpoint)
        matching = [r for r in candidates if host in _hosts(r)]
        if len(matching) != 1:
            which = "more than one" if matching else "none"
            raise ResourceMismatch(
                f"needs one {kind} resource, but {where} name several "
                f"({', '.join(map(repr, candidates))}) and {which} is for the endpoint's host "
                f"{host!r}; keep one, or use one credential per resource"
            )
        chosen = matching[0]
    return Selection(chosen, groups[chosen] + words)
