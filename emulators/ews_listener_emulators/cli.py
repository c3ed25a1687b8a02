"""``ews-listener emulator`` / ``python -m ews_listener_emulators``: run the emulated tenant.

Starts the token server, the EWS emulator and its admin API, and the Microsoft Graph endpoint on
the same mail store (``/v1.0``), on 127.0.0.1; registers a demo app (EWS ``full_access_as_app``,
Graph ``Mail.ReadWrite``), creates the demo mailboxes (``--seed demo`` also fills them, ``--feed
RATE`` keeps delivering; both protocols see that mail), then prints the endpoints, the CA file, a
listener TOML snippet, an exchangelib snippet and curl lines for Graph, and writes
``<state-dir>/listener.toml`` and ``<state-dir>/emulator.json`` (with ``graph_url``) for scripts.
Runs until SIGINT/SIGTERM, then stops everything and exits 0.

``emulator.json`` is written last and atomically: its appearance means "ready" (``make demo``
and the tests wait for it). The demo secret is throw-away (a new one per start unless
``--client-secret`` is given) and is written with mode 0600.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from ews_listener_emulators.admin import AdminServer
from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.feed import DEMO_MAILBOXES, Feeder, seed_demo
from ews_listener_emulators.graph.server import GraphEmulator
from ews_listener_emulators.ops import notifications
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer

__all__ = [
    "DEFAULT_CLIENT_ID",
    "Endpoints",
    "build_parser",
    "exchangelib_snippet",
    "graph_snippet",
    "main",
]

DEFAULT_CLIENT_ID = "6d656d75-6c61-4f72-8000-0000000de300"
DEFAULT_TENANT = "demo.example"
SCOPE = "https://outlook.office365.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"


@dataclass(frozen=True)
class Endpoints:
    """What a client needs to reach the running emulator (also ``emulator.json``)."""

    ews_url: str
    graph_url: str  # the Graph service root, https://127.0.0.1:PORT/v1.0
    token_endpoint: str
    token_server_url: str
    admin_url: str
    ews_port: int
    graph_port: int
    token_port: int
    admin_port: int
    tenant: str
    client_id: str
    client_secret: str
    ca_file: str | None
    mailboxes: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        data = dict(vars(self))
        data["mailboxes"] = list(self.mailboxes)
        data["pid"] = os.getpid()
        return data


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``ews-listener emulator``."""
    parser = argparse.ArgumentParser(
        prog="ews-listener emulator",
        description="Run an emulated Exchange Online tenant (EWS, Microsoft Graph mail and an "
        "OAuth 2.0 token server) on "
        "127.0.0.1 for tests and demos. Prints the endpoints and ready-to-paste client "
        "configuration; stops on Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="EWS port (default: any free)")
    parser.add_argument(
        "--graph-port", type=int, default=0, help="Microsoft Graph port (default: any free)"
    )
    parser.add_argument("--token-port", type=int, default=0, help="token server port")
    parser.add_argument("--admin-port", type=int, default=0, help="admin API port")
    parser.add_argument(
        "--http", action="store_true", help="plain HTTP instead of HTTPS (no CA file)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("var/emulator"),
        help="where ca.pem, listener.toml and emulator.json go (default: ./var/emulator)",
    )
    parser.add_argument(
        "--client-state-dir",
        type=Path,
        default=None,
        help="the state directory as clients see it, used for ca_bundle in listener.toml "
        "(e.g. a volume mounted elsewhere in another container; default: --state-dir)",
    )
    parser.add_argument(
        "--seed",
        choices=("demo", "none"),
        default="none",
        help="'demo' delivers sample messages to the demo mailboxes at start",
    )
    parser.add_argument(
        "--feed", type=float, default=0.0, metavar="RATE", help="keep delivering RATE msgs/s"
    )
    parser.add_argument("--random-seed", type=int, default=0, help="seed of the sample feed")
    parser.add_argument(
        "--mailbox",
        action="append",
        default=None,
        help="a mailbox to create (repeatable; default: the two demo mailboxes)",
    )
    parser.add_argument("--tenant", default=DEFAULT_TENANT, help="tenant name in the token URL")
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID, help="the demo app's client id")
    parser.add_argument(
        "--client-secret", default=None, help="the demo app's secret (default: a random one)"
    )
    parser.add_argument(
        "--token-lifetime", type=float, default=3600.0, help="access token lifetime, seconds"
    )
    parser.add_argument(
        "--minute",
        type=float,
        default=60.0,
        help="seconds in a protocol minute (subscription and streaming timeouts); tests shrink it",
    )
    parser.add_argument("--schema-dir", default=None, help="EWS schema folder to validate with")
    parser.add_argument(
        "--graph-schema-dir",
        default=None,
        help="Graph OpenAPI folder to validate answers with (default: $GRAPH_SCHEMA_DIR)",
    )
    parser.add_argument("--quiet", action="store_true", help="print nothing once started")
    return parser


def listener_toml(info: Endpoints, ca_for_clients: str | None) -> str:
    """The listener configuration for the emulator (format of ``listener.config``)."""
    ca = [f"ca_bundle = {json.dumps(ca_for_clients)}"] if ca_for_clients else []
    lines = [
        "# ews-listener configuration for the emulator; written by `ews-listener emulator`.",
        "[credentials.demo]",
        f"client_id = {json.dumps(info.client_id)}",
        f"token_endpoint = {json.dumps(info.token_endpoint)}",
        f'scopes = "{SCOPE}"',
        'auth_method = "body"',
        *ca,
        f'secret = {{ source = "inline", value = {json.dumps(info.client_secret)} }}',
        "",
    ]
    for address in info.mailboxes:
        name = re.sub(r"[^A-Za-z0-9_]", "_", address.split("@")[0])
        lines += [
            f"[mailboxes.{name}]",
            f"address = {json.dumps(address)}",
            'credential = "demo"',
            f"endpoint = {json.dumps(info.ews_url)}",
            *ca,
            'folder = "inbox"',
            'routes = [{ handlers = ["log"] }]',
            "",
        ]
    lines += ["[handlers.log]", 'type = "log"', ""]
    return "\n".join(lines)


def exchangelib_snippet(info: Endpoints, mailbox: str | None = None) -> str:
    """Python that reads the newest mail of a mailbox with exchangelib, as a client would."""
    address = mailbox or (info.mailboxes[0] if info.mailboxes else "orders@demo.example")
    insecure = (
        ""
        if info.ca_file
        else 'os.environ["OAUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain-HTTP emulator only\n'
    )
    return f"""\
import os

import requests
import requests.adapters
from exchangelib import (
    IMPERSONATION, OAUTH2, Account, Configuration, Identity, OAuth2AuthorizationCodeCredentials,
)
from exchangelib.protocol import BaseProtocol
from exchangelib.version import EXCHANGE_2016, Version

{insecure}CA = {json.dumps(info.ca_file)}


class EmulatorCA(requests.adapters.HTTPAdapter):
    # requests lets REQUESTS_CA_BUNDLE override verify=, so pin the emulator CA in the adapter.
    def cert_verify(self, conn, url, verify, cert):
        super().cert_verify(conn, url, CA or verify, cert)

    def get_connection_with_tls_context(self, request, verify, proxies=None, cert=None):
        return super().get_connection_with_tls_context(request, CA or verify, proxies, cert)


BaseProtocol.HTTP_ADAPTER_CLS = EmulatorCA
http = requests.Session()
http.mount("https://", EmulatorCA())
token = http.post(
    {json.dumps(info.token_endpoint)},
    data={{
        "grant_type": "client_credentials",
        "client_id": {json.dumps(info.client_id)},
        "client_secret": {json.dumps(info.client_secret)},
        "scope": "{SCOPE}",
    }},
).json()
credentials = OAuth2AuthorizationCodeCredentials(
    client_id={json.dumps(info.client_id)},
    access_token=token,
    identity=Identity(primary_smtp_address={json.dumps(address)}),
)
config = Configuration(
    service_endpoint={json.dumps(info.ews_url)},
    credentials=credentials,
    auth_type=OAUTH2,
    version=Version(build=EXCHANGE_2016),
)
account = Account(
    {json.dumps(address)}, config=config, autodiscover=False, access_type=IMPERSONATION
)
for item in account.inbox.all().order_by("-datetime_received")[:10]:
    print(item.datetime_received, item.sender.email_address, item.subject)
"""


def graph_snippet(info: Endpoints, mailbox: str | None = None) -> str:
    """Shell lines that get a Graph token and read a mailbox's newest mail over plain HTTP."""
    address = mailbox or (info.mailboxes[0] if info.mailboxes else "orders@demo.example")
    cacert = f"--cacert {shlex.quote(info.ca_file)} " if info.ca_file else ""
    messages = (
        f"{info.graph_url}/users/{address}/mailFolders/inbox/messages"
        "?$select=receivedDateTime,from,subject&$top=10"
    )
    return f"""\
TOKEN=$(curl -s {cacert}{shlex.quote(info.token_endpoint)} \\
  -d grant_type=client_credentials -d client_id={shlex.quote(info.client_id)} \\
  --data-urlencode client_secret={shlex.quote(info.client_secret)} \\
  --data-urlencode scope={GRAPH_SCOPE} \\
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
curl -s {cacert}-H "Authorization: Bearer $TOKEN" \\
  {shlex.quote(f"{info.graph_url}/users/{address}/mailFolders/inbox")}
curl -s {cacert}-H "Authorization: Bearer $TOKEN" \\
  {shlex.quote(messages)}
"""


def _write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` (only possible from the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _announce(info: Endpoints, toml: str, state_dir: Path, out: TextIO) -> None:
    rule = "-" * 78
    print(
        f"EWS emulator ready\n"
        f"  EWS endpoint    {info.ews_url}\n"
        f"  Graph endpoint  {info.graph_url}\n"
        f"  token endpoint  {info.token_endpoint}\n"
        f"  admin API       {info.admin_url}\n"
        f"  CA file         {info.ca_file or '(plain HTTP)'}\n"
        f"  client id       {info.client_id}\n"
        f"  client secret   {info.client_secret}   (throw-away, this run only)\n"
        f"  mailboxes       {', '.join(info.mailboxes)}\n"
        f"  files           {state_dir / 'listener.toml'}, {state_dir / 'emulator.json'}\n"
        f"\n# ews-listener configuration ({state_dir / 'listener.toml'})\n{rule}\n{toml}{rule}\n"
        f"\n# exchangelib\n{rule}\n{exchangelib_snippet(info)}{rule}\n"
        f"\n# Microsoft Graph (scope {GRAPH_SCOPE}, the same client id and secret)\n"
        f"{rule}\n{graph_snippet(info)}{rule}\n"
        "Ctrl-C or SIGTERM stops the emulator.",
        file=out,
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM; returns the exit code (0 on a clean stop)."""
    options = build_parser().parse_args(argv)
    return run(options, threading.Event())


def run(options: argparse.Namespace, stop: threading.Event, out: TextIO | None = None) -> int:
    """The body of ``main``: start, announce, wait for ``stop``, shut down in order."""
    out = out or sys.stdout
    state_dir: Path = options.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    for name in ("emulator.json", "listener.toml"):
        (state_dir / name).unlink(missing_ok=True)
    ca = None if options.http else EmulatorCA(state_dir)
    secret = options.client_secret or secrets.token_urlsafe(24)
    mailboxes = tuple(options.mailbox or DEMO_MAILBOXES)

    token_server = TokenServer(
        ca=ca, host=options.host, port=options.token_port, token_lifetime=options.token_lifetime
    )
    emulator = EwsEmulator(token_server, ca, port=options.port, schema_dir=options.schema_dir)
    if options.host != "127.0.0.1":
        emulator.http_server.host = options.host
    graph = GraphEmulator.beside(
        emulator,
        token_server,
        ca,
        host=options.host,
        port=options.graph_port,
        schema_dir=options.graph_schema_dir,
    )
    notifications.configure(emulator, minute=options.minute)
    admin = AdminServer(emulator, token_server, host=options.host, port=options.admin_port)
    feeder: Feeder | None = None
    with _stop_on_signals(stop):
        try:
            token_server.start()
            token_server.add_tenant(options.tenant)
            token_server.register_app(
                options.tenant, options.client_id, secret=secret, display_name="ews-listener demo"
            )
            emulator.start()
            graph.start()
            admin.start()
            for address in mailboxes:
                emulator.add_mailbox(address)
            if options.seed == "demo":
                seed_demo(emulator, mailboxes, seed=options.random_seed)
            if options.feed > 0:
                feeder = Feeder(emulator, mailboxes, options.feed, options.random_seed).start()

            info = Endpoints(
                ews_url=emulator.url,
                graph_url=graph.url,
                token_endpoint=token_server.token_endpoint(options.tenant),
                token_server_url=token_server.url,
                admin_url=admin.url,
                ews_port=emulator.http_server.port,
                graph_port=graph.http_server.port,
                token_port=token_server.port,
                admin_port=admin.port,
                tenant=options.tenant,
                client_id=options.client_id,
                client_secret=secret,
                ca_file=str(ca.ca_file) if ca is not None else None,
                mailboxes=mailboxes,
            )
            client_dir = options.client_state_dir or state_dir
            client_ca = str(Path(client_dir) / "ca.pem") if ca is not None else None
            toml = listener_toml(info, client_ca)
            _write_atomic(state_dir / "listener.toml", toml)
            _write_atomic(state_dir / "emulator.json", json.dumps(info.as_json(), indent=2))
            if not options.quiet:
                _announce(info, toml, state_dir, out)
            stop.wait()
        finally:
            # Producers first (no delivery into a stopping server), then the servers clients
            # talk to, the token server last so in-flight EWS requests can still verify tokens.
            if feeder is not None:
                feeder.stop()
            admin.stop()
            graph.stop()
            emulator.stop()
            token_server.stop()
    if not options.quiet:
        print("EWS emulator stopped", file=out, flush=True)
    return 0
