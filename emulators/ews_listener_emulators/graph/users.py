"""``users/{id | userPrincipalName}``: the user a mailbox belongs to, as Graph names it.

A user's ``id`` is a GUID derived from the mailbox address (stable across runs, as an Entra object
id is); ``userPrincipalName`` and ``mail`` are the address. Either names the user in a URL, in any
case (Graph resolves ``users/{upn}`` case-insensitively).
"""

from __future__ import annotations

import uuid

from ews_listener_emulators.graph._contract import GraphAnswer, GraphRequest, Route
from ews_listener_emulators.graph._odata import selected
from ews_listener_emulators.store import Mailbox, MailStore

__all__ = ["ROUTES", "mailbox_for", "user_id"]

_NAMESPACE = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")  # uuid.NAMESPACE_URL
_PROPERTIES = ("id", "displayName", "mail", "userPrincipalName")


def user_id(mailbox: Mailbox) -> str:
    """The user's object id: a GUID derived from the address."""
    return str(uuid.uuid5(_NAMESPACE, "user:" + mailbox.address.lower()))


def mailbox_for(store: MailStore, user: str) -> Mailbox | None:
    """The mailbox of ``users/{user}``: by userPrincipalName (the address) or by object id."""
    found = store.mailbox(user)
    if found is not None:
        return found
    wanted = user.lower()
    return next((m for m in store.mailboxes() if user_id(m) == wanted), None)


def user_resource(mailbox: Mailbox) -> dict[str, str]:
    return {
        "id": user_id(mailbox),
        "displayName": mailbox.display_name,
        "mail": mailbox.address,
        "userPrincipalName": mailbox.address,
    }


def get_user(request: GraphRequest) -> GraphAnswer:
    fields = selected(request, _PROPERTIES, "microsoft.graph.user")
    body = user_resource(request.mailbox)
    context = f"{request.base_url}/$metadata#users/$entity"
    if fields is not None:
        context = f"{request.base_url}/$metadata#users({','.join(fields)})/$entity"
        body = {name: body[name] for name in fields}
    return GraphAnswer(json={"@odata.context": context, **body})


# The pattern "" is the user itself (no segment after users/{user}); the server matches it.
ROUTES: list[Route] = [
    Route("GET", "", get_user, "/users/{user-id}", "users.user.GetUser"),
]
