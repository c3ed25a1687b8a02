"""How fast are the emulators? Requests/s for small EWS GetItem and SyncFolderItems, and for small
Microsoft Graph GETs (the Graph endpoint of the same process, on the same store).

The emulator runs as a subprocess (``python -m ews_listener_emulators``), so the clients here do not
share its GIL: the figure is the server's, on this machine, not the client's thread scheduling.
(In-process, client and server would compete for one interpreter and roughly halve it.)

Two kinds of client, each with several threads:

- raw ``httpx`` keep-alive clients posting prepared SOAP envelopes (one client per thread): the
  ceiling of the server;
- the real exchangelib (one ``Account``, ``max_connections`` = threads): what our listener sees,
  including exchangelib's own XML building and parsing.

Usage: ``python benchmarks/emulator.py [--duration 3] [--threads 4] [--check]``; ``--check``
exits 1 when raw GetItem or the small Graph GET is under the goal of 500 requests/s (issue 12).
Runs in well under a minute.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
MAILBOX = "bench@demo.example"
GOAL = 500.0
ITEMS = 200

_ENVELOPE = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"'
    ' xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages"'
    ' xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types">'
    '<s:Header><t:RequestServerVersion Version="Exchange2016"/>'
    "<t:ExchangeImpersonation><t:ConnectingSID>"
    f"<t:PrimarySmtpAddress>{MAILBOX}</t:PrimarySmtpAddress>"
    "</t:ConnectingSID></t:ExchangeImpersonation></s:Header><s:Body>{body}</s:Body></s:Envelope>"
)


def get_item_body(item_id: str) -> str:
    """A small GetItem: one id, IdOnly plus subject and read flag (what a poll asks for)."""
    return (
        "<m:GetItem><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape><t:AdditionalProperties>"
        '<t:FieldURI FieldURI="item:Subject"/><t:FieldURI FieldURI="message:IsRead"/>'
        "</t:AdditionalProperties></m:ItemShape>"
        f'<m:ItemIds><t:ItemId Id="{item_id}"/></m:ItemIds></m:GetItem>'
    )


SYNC_BODY = (
    "<m:SyncFolderItems><m:ItemShape><t:BaseShape>IdOnly</t:BaseShape></m:ItemShape>"
    '<m:SyncFolderId><t:DistinguishedFolderId Id="inbox"/></m:SyncFolderId>'
    "<m:MaxChangesReturned>100</m:MaxChangesReturned></m:SyncFolderItems>"
)


class Emulator:
    """``python -m ews_listener_emulators`` in a subprocess, with ITEMS messages in one inbox."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ews_listener_emulators",
                "--state-dir",
                str(state),
                "--mailbox",
                MAILBOX,
                "--quiet",
            ],
            cwd=REPO,
        )
        self.info = self._wait_ready()
        self.context = ssl.create_default_context(cafile=self.info["ca_file"])
        # The standing per-mailbox limit is Exchange's 27; the benchmark measures throughput.
        admin = self.info["admin_url"]
        httpx.put(f"{admin}/faults/connection-limit", json={"limit": None}).raise_for_status()
        from ews_listener_emulators.feed import SampleFactory

        factory = SampleFactory(1)
        with httpx.Client() as client:
            for _ in range(ITEMS):
                raw = base64.b64encode(factory.message(MAILBOX, "order_text")).decode()
                client.post(
                    f"{admin}/mailboxes/{MAILBOX}/messages", json={"mime_base64": raw}
                ).raise_for_status()
            items = client.get(f"{admin}/mailboxes/{MAILBOX}/items").json()
        self.item_ids = [i["item_id"] for i in items]

    def _wait_ready(self, timeout: float = 30) -> dict[str, Any]:
        marker = self.state / "emulator.json"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the emulator exited with {self.process.returncode}")
            if marker.exists():
                return dict(json.loads(marker.read_text()))
            time.sleep(0.05)
        raise SystemExit("the emulator did not start")

    def token(self, scope: str = "https://outlook.office365.com/.default") -> str:
        with httpx.Client(verify=self.context) as client:
            answer = client.post(
                self.info["token_endpoint"],
                data={
                    "grant_type": "client_credentials",
                    "client_id": self.info["client_id"],
                    "client_secret": self.info["client_secret"],
                    "scope": scope,
                },
            )
        answer.raise_for_status()
        return str(answer.json()["access_token"])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)


def measure(threads: int, duration: float, work: Callable[[int], Callable[[], None]]) -> float:
    """Requests/s of ``threads`` threads, each running its ``work(index)()`` for ``duration``."""
    counts = [0] * threads
    errors: list[BaseException] = []
    start = threading.Barrier(threads + 1)
    stop = threading.Event()

    def loop(index: int) -> None:
        call = work(index)
        call()  # warm up (TLS handshake, first session) before the clock starts
        start.wait()
        try:
            while not stop.is_set():
                call()
                counts[index] += 1
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    start.wait()
    began = time.perf_counter()
    stop.wait(duration)
    stop.set()
    for thread in pool:
        thread.join(30)
    elapsed = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"{len(errors)} client thread(s) failed: {errors[0]!r}")
    return sum(counts) / elapsed


def raw_client(emulator: Emulator, token: str, body: Callable[[int], str]) -> Callable[[int], Any]:
    def work(index: int) -> Callable[[], None]:
        client = httpx.Client(verify=emulator.context, timeout=30)
        headers = {
            "Authorization": f"Bearer {token}",
            "X-AnchorMailbox": MAILBOX,
            "Content-Type": "text/xml; charset=utf-8",
        }
        counter = iter(range(10**12))

        def call() -> None:
            payload = _ENVELOPE.format(body=body(next(counter) + index)).encode()
            answer = client.post(emulator.info["ews_url"], content=payload, headers=headers)
            if answer.status_code != 200 or b'ResponseClass="Error"' in answer.content:
                raise RuntimeError(f"HTTP {answer.status_code}: {answer.content[:300]!r}")

        return call

    return work


def graph_client(emulator: Emulator, token: str, path: str) -> Callable[[int], Any]:
    """Keep-alive httpx clients GETting ``path`` below the Graph service root."""

    def work(index: int) -> Callable[[], None]:
        client = httpx.Client(verify=emulator.context, timeout=30)
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{emulator.info['graph_url']}/{path}"

        def call() -> None:
            answer = client.get(url, headers=headers)
            if answer.status_code != 200:
                raise RuntimeError(f"HTTP {answer.status_code}: {answer.content[:300]!r}")

        return call

    return work


def graph_message_path(emulator: Emulator, token: str) -> str:
    """``users/{upn}/messages/{id}?$select=subject,isRead`` for the newest inbox message: the
    Graph twin of the small GetItem."""
    inbox = f"{emulator.info['graph_url']}/users/{MAILBOX}/mailFolders/inbox/messages"
    with httpx.Client(verify=emulator.context) as client:
        answer = client.get(
            inbox,
            params={"$select": "id", "$top": "1"},
            headers={"Authorization": f"Bearer {token}"},
        )
    answer.raise_for_status()
    message_id = answer.json()["value"][0]["id"]
    return f"users/{MAILBOX}/messages/{message_id}?$select=subject,isRead"


def exchangelib_account(emulator: Emulator, token: str, connections: int) -> Any:
    import requests.adapters
    from exchangelib import (
        IMPERSONATION,
        OAUTH2,
        Account,
        Configuration,
        Identity,
        OAuth2AuthorizationCodeCredentials,
    )
    from exchangelib.protocol import BaseProtocol, FailFast
    from exchangelib.version import EXCHANGE_2016, Version

    ca = emulator.info["ca_file"]

    class EmulatorCA(requests.adapters.HTTPAdapter):
        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            super().cert_verify(conn, url, ca, cert)

        def get_connection_with_tls_context(
            self, request: Any, verify: Any, proxies: Any = None, cert: Any = None
        ) -> Any:
            return super().get_connection_with_tls_context(request, ca, proxies, cert)

    BaseProtocol.HTTP_ADAPTER_CLS = EmulatorCA
    credentials = OAuth2AuthorizationCodeCredentials(
        client_id=emulator.info["client_id"],
        access_token={"access_token": token, "token_type": "Bearer", "expires_in": 3600},
        identity=Identity(primary_smtp_address=MAILBOX),
    )
    config = Configuration(
        service_endpoint=emulator.info["ews_url"],
        credentials=credentials,
        auth_type=OAUTH2,
        version=Version(build=EXCHANGE_2016),
        retry_policy=FailFast(),
        max_connections=connections,
    )
    return Account(MAILBOX, config=config, autodiscover=False, access_type=IMPERSONATION)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=4, help="client threads")
    parser.add_argument("--check", action="store_true", help=f"exit 1 below {GOAL:.0f} req/s")
    options = parser.parse_args(argv)
    threads, duration = options.threads, options.duration
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as state:
        emulator = Emulator(Path(state))
        try:
            token = emulator.token()
            graph_token = emulator.token("https://graph.microsoft.com/.default")
            graph_message = graph_message_path(emulator, graph_token)
            ids = emulator.item_ids
            account = exchangelib_account(emulator, token, threads)
            inbox = account.inbox
            from exchangelib.items import Message

            ex_ids = [(i, None) for i in ids]

            def ex_get(index: int) -> Callable[[], None]:
                counter = iter(range(10**12))

                def call() -> None:
                    item_id = ex_ids[(next(counter) * threads + index) % len(ex_ids)]
                    (item,) = account.fetch([item_id], only_fields=["subject", "is_read"])
                    assert isinstance(item, Message), item

                return call

            def ex_sync(index: int) -> Callable[[], None]:
                def call() -> None:
                    changes = inbox.sync_items(
                        sync_state=None, only_fields=["id"], max_changes_returned=100
                    )
                    for _ in zip(range(100), changes, strict=False):
                        pass

                return call

            rows = [
                (
                    "httpx (raw)",
                    "GetItem",
                    raw_client(emulator, token, lambda n: get_item_body(ids[n % len(ids)])),
                ),
                (
                    "httpx (raw)",
                    "SyncFolderItems x100",
                    raw_client(emulator, token, lambda n: SYNC_BODY),
                ),
                ("exchangelib", "GetItem", ex_get),
                ("exchangelib", "SyncFolderItems x100", ex_sync),
                (
                    "httpx (Graph)",
                    "GET message $select",
                    graph_client(emulator, graph_token, graph_message),
                ),
                (
                    "httpx (Graph)",
                    "GET mailFolders/inbox",
                    graph_client(emulator, graph_token, f"users/{MAILBOX}/mailFolders/inbox"),
                ),
                (
                    "httpx (Graph)",
                    "GET mailFolders (list)",
                    graph_client(emulator, graph_token, f"users/{MAILBOX}/mailFolders"),
                ),
            ]
            results = [(client, op, measure(threads, duration, work)) for client, op, work in rows]
        finally:
            emulator.stop()
    print(
        f"\nEmulator throughput ({threads} client threads, {duration:.0f} s each, "
        f"emulator in its own process, TLS, {os.cpu_count()} CPUs)\n"
    )
    print(f"{'client':<14}{'operation':<24}{'requests/s':>12}")
    print("-" * 50)
    for client, op, rate in results:
        print(f"{client:<14}{op:<24}{rate:>12.0f}")
    raw_get = results[0][2]
    graph_get = results[4][2]
    for name, rate in (("small GetItem", raw_get), ("small Graph GET", graph_get)):
        verdict = "meets" if rate >= GOAL else "BELOW"
        print(f"\n{name}: {rate:.0f} requests/s ({verdict} the goal of {GOAL:.0f})", end="")
    print(f"; total {time.monotonic() - began:.1f} s")
    return 1 if options.check and min(raw_get, graph_get) < GOAL else 0


if __name__ == "__main__":
    raise SystemExit(main())
