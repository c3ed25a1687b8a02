"""One module-scoped run of the whole corpus through the real pipeline.

Token server, EWS emulator, real exchangelib, the real configuration loader, ``run_once`` and the
real handlers, all in this process: every case is delivered into one mailbox (hostile ones between
normal ones), then one poll hands the whole folder over. The tests only read what came out. The
25 MB attachment makes a second world too expensive, hence one world for the module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ews_listener_emulators.ca import EmulatorCA
from ews_listener_emulators.server import EwsEmulator
from ews_listener_emulators.token_server import TokenServer
from listener.abc import DeadLetter, LedgerEntry
from listener.config import load_settings
from listener.daemon import run_once
from listener.model import Message
from listener.poller import PollResult
from listener.store import open_store
from tests import REPO
from tests.corpus import recorder
from tests.corpus.messages import MAILBOX, Corpus, build_corpus

_SHARED_SCHEMA = REPO.parent / "shared" / "ews-schema"
SCHEMA_DIR = os.environ.get("EWS_SCHEMA_DIR") or (
    str(_SHARED_SCHEMA) if _SHARED_SCHEMA.is_dir() else None
)
TENANT = "corpus.onmicrosoft.com"
CLIENT_ID = "22222222-aaaa-4bbb-8ccc-000000000001"
SECRET = "corpus-secret/+=&x"
# Exchange writes outside the watched folder on the listener's behalf only through a move; a
# dead-lettered item lands here, so a test can see it is still in the mailbox.
DEAD_LETTER_FOLDER = "Inbox/Dead letters"


@dataclass
class CorpusRun:
    """What one poll of the whole corpus produced."""

    corpus: Corpus
    root: Path
    out: Path  # the directory handler's folder
    ews: EwsEmulator
    item_ids: dict[str, str]  # case name -> EWS item id as delivered
    first: PollResult
    second: PollResult  # a second poll right after: nothing left, nothing repeated
    received: list[Message]  # everything the recording handler was handed, in order
    dead: list[DeadLetter]
    ledger: list[LedgerEntry]
    pending: int

    def message(self, name: str) -> Message:
        """The one event the recording handler received for case ``name``."""
        item_id = self.item_ids[name]
        found = [m for m in self.received if m.item_id == item_id]
        assert len(found) == 1, f"{name}: handed over {len(found)} times"
        return found[0]

    def eml(self, name: str) -> bytes:
        return (self.out / f"{self.message(name).idempotency_key}.eml").read_bytes()

    def event_json(self, name: str) -> dict[str, object]:
        path = self.out / f"{self.message(name).idempotency_key}.json"
        data: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def attachment_dir(self, name: str) -> Path:
        return self.out / f"{self.message(name).idempotency_key}.attachments"


def _config(root: Path, ca: EmulatorCA, tokens: TokenServer, ews: EwsEmulator) -> Path:
    text = f"""
[credentials.corpus]
client_id = "{CLIENT_ID}"
token_endpoint = "{tokens.token_endpoint(TENANT)}"
scopes = "https://outlook.office365.com/.default"
auth_method = "body"
ca_bundle = "{ca.ca_file}"
secret = {{ source = "inline", value = "{SECRET}" }}

[mailboxes.corpus]
address = "{MAILBOX}"
credential = "corpus"
endpoint = "{ews.url}"
ca_bundle = "{ca.ca_file}"
start_from = "all"
batch_size = 16
routes = [{{ handlers = ["record", "files"] }}]
# One attempt: a case that fails at all is a dead letter within this one poll, not a retry.
on_failure = {{ max_attempts = 1, backoff = 0.01, dead_letter = "move:{DEAD_LETTER_FOLDER}" }}

[handlers.record]
type = "python"
target = "tests.corpus.recorder:record"

[handlers.files]
type = "directory"
path = "{root / "out"}"
attachments = true

[state]
url = "sqlite:///{root / "state.db"}"

[service]
jitter = 0
log_level = "warning"
"""
    path = root / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


@contextmanager
def emulated(root: Path) -> Iterator[tuple[EmulatorCA, TokenServer, EwsEmulator]]:
    """A token server and an EWS emulator with the corpus mailbox, on loopback."""
    ca = EmulatorCA(root / "ca")
    tokens = TokenServer(ca=ca, token_lifetime=3600)
    tokens.start()
    try:
        tokens.add_tenant(TENANT)
        tokens.register_app(TENANT, CLIENT_ID, secret=SECRET)
        ews = EwsEmulator(tokens, ca, schema_dir=SCHEMA_DIR)
        ews.start()
        try:
            ews.add_mailbox(MAILBOX, "Corpus")
            yield ca, tokens, ews
        finally:
            ews.stop()
    finally:
        tokens.stop()
    if SCHEMA_DIR:
        invalid = [r for r in ews.request_log if r.schema_valid is False]
        assert not invalid, f"requests the schema rejects: {invalid[:3]}"


def poll_once(
    root: Path, ca: EmulatorCA, tokens: TokenServer, ews: EwsEmulator
) -> tuple[PollResult, list[Message]]:
    """One ``run_once`` of the corpus mailbox: its result and what the recorder was handed."""
    settings = load_settings(_config(root, ca, tokens, ews), env={})
    recorder.RECEIVED.clear()
    try:
        result = run_once(settings)["corpus"]
        return result, list(recorder.RECEIVED)
    finally:
        recorder.RECEIVED.clear()


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusRun]:
    """Deliver the corpus, poll once, poll again, and collect what came out."""
    root = tmp_path_factory.mktemp("corpus")
    corpus = build_corpus()
    with emulated(root) as (ca, tokens, ews):
        item_ids = {
            case.name: ews.deliver(MAILBOX, case.raw, item_class=case.item_class)
            for case in corpus.cases
        }
        first, received = poll_once(root, ca, tokens, ews)
        second, _ = poll_once(root, ca, tokens, ews)
        store = open_store(f"sqlite:///{root / 'state.db'}", create=False)
        try:
            dead = store.dead_letters()
            ledger = store.ledger()
            pending = store.pending_count()
        finally:
            store.close()
        yield CorpusRun(
            corpus=corpus,
            root=root,
            out=root / "out",
            ews=ews,
            item_ids=item_ids,
            first=first,
            second=second,
            received=received,
            dead=dead,
            ledger=ledger,
            pending=pending,
        )
