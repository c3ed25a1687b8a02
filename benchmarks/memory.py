"""Memory a message costs: peak RSS of ``ews-listener once`` handing over one large attachment.

Usage::

    .venv/bin/python benchmarks/memory.py [--size-mib 30] [--handler directory|bytes|both]
        [--quick]

One mailbox of the emulator (token server + EWS, in a spawned child process) holds one message
with one attachment of ``--size-mib`` MiB of random bytes; the real daemon (``python -m listener
once``, a subprocess) hands it over to

- ``directory``: the built-in directory handler with ``attachments = true``, which writes the
  ``.eml`` and the attachment through the streaming API (``message.open_mime()``,
  ``attachment.open()``);
- ``bytes``: a python handler that calls ``message.mime()`` and ``attachment.content()``, the
  bytes API, which holds the whole content in memory by design.

Peak RSS is the daemon's ``ru_maxrss`` from ``wait4()`` (the kernel's high-water mark, not a
sample), taken by a small launcher process (see ``_LAUNCHER`` for why). Each run is compared
with the same run for a message without an attachment (the baseline: interpreter, imports, TLS,
one poll), so "per message" is the difference. Finally the
files written are checked against what was sent (sha256): a figure for a run that lost content
would mean nothing.

What the figures depend on (repeated in the output): ``SPOOL_MAX_MEMORY`` (1 MiB: content past
it goes to a temporary file in ``$TMPDIR``); exchangelib's SAX parser reading the HTTP stream
64 KiB at a time; the message's bodies and headers, which are part of the ``Message`` value and
so in memory whatever their size (here a one-line body).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import (
    CLIENT_ID,
    CLIENT_SECRET,
    EmulatorProcess,
    Endpoints,
    daemon_argv,
    daemon_env,
    print_table,
    workdir,
)

from tests.configs import emulated_credentials, table

__all__ = ["main", "read_bytes"]

_OUT_ENV = "BENCH_MEMORY_OUT"


def read_bytes(message: Any) -> None:
    """The ``bytes`` handler (runs in the daemon): the whole MIME and every attachment in memory,
    then their digests to ``$BENCH_MEMORY_OUT`` so the script can check them."""
    mime = message.mime()
    lines = [f"mime {hashlib.sha256(mime).hexdigest()}"]
    for attachment in message.attachments:
        data = attachment.content()
        lines.append(f"{attachment.name} {hashlib.sha256(data).hexdigest()}")
    Path(os.environ[_OUT_ENV]).write_text("\n".join(lines) + "\n")


def _mime(address: str, attachment: bytes | None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Customer <customer@example.net>"
    msg["To"] = address
    msg["Subject"] = "memory benchmark"
    msg["Message-ID"] = f"<memory.{time.time_ns()}@example.net>"
    msg.set_content("The drawings are attached.\n")
    if attachment is not None:
        msg.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename="drawings.bin"
        )
    return msg.as_bytes()


def _config(path: Path, endpoints: Endpoints, address: str, handler: str, out: Path) -> Path:
    lines = emulated_credentials(
        {"bench": (CLIENT_ID, CLIENT_SECRET)},
        token_endpoint=endpoints.token_endpoint,
        ca_file=endpoints.ca_file,
        env_prefix="BENCH_SECRET_",
    )
    lines += table(
        "mailboxes.box",
        {
            "address": address,
            "credential": "bench",
            "endpoint": endpoints.ews_url,
            "ca_bundle": str(endpoints.ca_file),
            "start_from": "all",
            "routes": [{"handlers": ["out"]}],
        },
    )
    if handler == "directory":
        lines += table("handlers.out", {"type": "directory", "path": str(out), "attachments": True})
    else:
        lines += table("handlers.out", {"type": "python", "target": "memory:read_bytes"})
    lines += table("state", {"url": f"sqlite:///{path.parent / (path.stem + '.db')}"})
    lines += table("service", {"log_level": "warning", "jitter": 0, "watchdog": False})
    path.write_text("\n".join(lines))
    return path


# Runs each ``once`` for the script and reports its peak RSS. A separate small process because
# Linux carries the parent's high-water mark into a child made with vfork (what subprocess uses)
# when it execs: started from this script, which holds the payload to check it, ``ru_maxrss``
# reported the script's peak (410 MB) instead of the daemon's.
_LAUNCHER = """
import json, os, subprocess, sys, time
for line in sys.stdin:
    argv, env = json.loads(line)
    started = time.monotonic()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    answer = [usage.ru_maxrss, time.monotonic() - started, p.returncode, out[-3000:]]
    print(json.dumps(answer), flush=True)
"""


class Launcher:
    """A small process that runs commands and answers with their ``ru_maxrss`` (KiB)."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def once(self, config: Path, env: dict[str, str]) -> tuple[float, float]:
        """Run ``ews-listener once``: (peak RSS in MB, seconds)."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps([daemon_argv("once", config, "--json"), env]) + "\n")
        self._process.stdin.flush()
        maxrss_kib, seconds, code, output = json.loads(self._process.stdout.readline())
        if code != 0:
            raise SystemExit(f"once exited {code}:\n{output}")
        return maxrss_kib / 1024, seconds

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(10)


def _check_directory(out: Path, digest: str | None) -> str:
    """Verify what the directory handler wrote; the digest of the attachment it holds."""
    [event] = out.glob("*.json")
    eml = message_from_bytes(event.with_suffix(".eml").read_bytes(), policy=policy.default)
    assert isinstance(eml, EmailMessage)
    parts = list(eml.iter_attachments())
    if digest is None:
        assert not parts, "the baseline message has no attachment"
        return "-"
    [part] = parts
    in_eml = hashlib.sha256(part.get_content()).hexdigest()
    written = hashlib.sha256((event.with_suffix(".attachments") / "drawings.bin").read_bytes())
    assert in_eml == digest, "the .eml's attachment differs from what was sent"
    assert written.hexdigest() == digest, "the attachment file differs from what was sent"
    return "intact"


def _check_bytes(out_file: Path, digest: str | None) -> str:
    got = dict(line.split(" ", 1) for line in out_file.read_text().splitlines())
    if digest is None:
        assert set(got) == {"mime"}
        return "-"
    assert got["drawings.bin"] == digest, "the attachment differs from what was sent"
    return "intact"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", type=float, default=30.0, help="attachment size (MiB)")
    parser.add_argument("--handler", choices=("directory", "bytes", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="a 3 MiB attachment (CI)")
    args = parser.parse_args(argv)
    size = int((3.0 if args.quick else args.size_mib) * (1 << 20))
    handlers = ("directory", "bytes") if args.handler == "both" else (args.handler,)

    rows: list[list[object]] = []
    launcher = Launcher()  # first, while this script is small (see _LAUNCHER)
    with workdir() as root, EmulatorProcess(root) as emulator:
        assert emulator.endpoints is not None
        payload = os.urandom(size)
        digest = hashlib.sha256(payload).hexdigest()
        for handler in handlers:
            baseline_mb = 0.0
            for label, attachment in (
                ("no attachment", None),
                (f"{size / (1 << 20):g} MiB", payload),
            ):
                n = len(rows)
                address = f"memory{n}@contoso.com"
                emulator.add_mailboxes([address])
                emulator.deliver(address, [_mime(address, attachment)])
                out = root / f"out{n}"
                config = _config(
                    root / f"memory{n}.toml", emulator.endpoints, address, handler, out
                )
                env = daemon_env()
                env[_OUT_ENV] = str(root / f"digests{n}.txt")
                peak_mb, seconds = launcher.once(config, env)
                expected = digest if attachment is not None else None
                if handler == "directory":
                    intact = _check_directory(out, expected)
                else:
                    intact = _check_bytes(Path(env[_OUT_ENV]), expected)
                if attachment is None:
                    baseline_mb = peak_mb
                rows.append(
                    [
                        handler,
                        label,
                        f"{peak_mb:.0f}",
                        f"{peak_mb - baseline_mb:+.0f}" if attachment is not None else "-",
                        f"{seconds:.1f}",
                        intact,
                    ]
                )
    launcher.close()
    print("ews-listener once, one message: the daemon's peak RSS (ru_maxrss)")
    print_table(["handler", "attachment", "peak MB", "over baseline", "seconds", "content"], rows)
    print(
        "\nIn memory per message: at most SPOOL_MAX_MEMORY (1 MiB) of content per open stream, "
        "plus exchangelib's 64 KiB parser buffers; past that, content goes to $TMPDIR. Bodies and "
        "headers are part of the Message value and always in memory. The bytes API (mime(), "
        "content()) holds the whole content by design."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
