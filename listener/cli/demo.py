"""``ews-listener emulator`` and ``ews-listener demo``: the emulators, alone or watched.

``demo`` (``make demo``) runs the emulators (EWS, Microsoft Graph and the token server over one
mail store) with two demo mailboxes and a feed of realistic mail, and the real daemon watching
them with ``config/demo.toml``: one mailbox over EWS, the other over Graph.

The emulators are a distribution of their own, ``ews-listener-emulators`` (``emulators/`` in the
repository): test and demo infrastructure that a production install leaves out (issue 12).
These two commands import them only when run, and without them say what to install and exit
69, ``EX_UNAVAILABLE`` ("a support program does not exist"), not 64: the command line is right,
the program it needs is missing. Guarded by ``tests/cli/test_emulators_missing.py``.

The emulator runs in its own process group so Ctrl-C stops both cleanly and leaves nothing
behind: the daemon shuts down in order, then the emulator gets SIGTERM (SIGKILL after 10 s).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from listener.cli._common import Commands, echo, load_config
from listener.errors import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

__all__ = ["cmd_emulator", "register", "run_demo"]

EMULATORS = "ews_listener_emulators"
_NOT_INSTALLED = (
    "{command}: the emulators are not installed (test and demo infrastructure, left out of a "
    "production install). Install them: pip install ews-listener-emulators (from a checkout "
    "of ews-listener: pip install -e ./emulators, which `make demo` and `make test` do)."
)

DEMO_STATE = Path("var/emulator")
# config/demo.toml points at these; change both together.
EWS_PORT = 18443
TOKEN_PORT = 18444
ADMIN_PORT = 18445
GRAPH_PORT = 18447


def _emulators_missing(command: str) -> bool:
    """Whether the emulators' package cannot be imported; if so, say what to install."""
    try:
        importlib.import_module(EMULATORS)  # its __init__ only: a docstring, nothing starts
    except ModuleNotFoundError as exc:
        if exc.name != EMULATORS:
            raise  # one of its own imports is broken: show that, not "install it"
        echo(_NOT_INSTALLED.format(command=command), err=True)
        return True
    return False


def _start_emulator(state_dir: Path, feed: float) -> subprocess.Popen[bytes]:
    (state_dir / "emulator.json").unlink(missing_ok=True)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            EMULATORS,
            "--state-dir",
            str(state_dir),
            "--port",
            str(EWS_PORT),
            "--token-port",
            str(TOKEN_PORT),
            "--graph-port",
            str(GRAPH_PORT),
            "--seed",
            "demo",
            "--feed",
            str(feed),
            "--quiet",
        ],
        start_new_session=True,
    )


def _wait_ready(
    process: subprocess.Popen[bytes], marker: Path, timeout: float = 30
) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited with code {process.returncode}")
        if marker.exists():
            try:
                return dict(json.loads(marker.read_text()))
            except ValueError:
                pass  # being written
        time.sleep(0.1)
    raise RuntimeError(f"the emulator did not start within {timeout:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def run_demo(args: argparse.Namespace) -> int:
    """Start the emulator, run the daemon until Ctrl-C, stop both."""
    from listener.daemon import run_daemon  # noqa: PLC0415
    from listener.observability import configure_logging  # noqa: PLC0415

    if _emulators_missing("demo"):
        return EXIT_UNAVAILABLE
    if not args.config:
        args.config = "config/demo.toml"
    DEMO_STATE.mkdir(parents=True, exist_ok=True)
    emulator = _start_emulator(DEMO_STATE, args.feed)
    try:
        try:
            info = _wait_ready(emulator, DEMO_STATE / "emulator.json")
        except RuntimeError as e:
            echo(f"demo: {e} (are ports {EWS_PORT} and {TOKEN_PORT} free?)", err=True)
            return EXIT_UNAVAILABLE
        # The demo app's secret is made up by the emulator at start; hand it over the way a
        # real deployment would: through the environment (config/demo.toml reads it from there).
        os.environ["EWS_DEMO_CLIENT_SECRET"] = str(info["client_secret"])
        settings = load_config(args)
        configure_logging(fmt=args.log_format or "console", level=args.log_level or "info")
        echo(
            f"demo: emulator at {info.get('ews_url')}, watching "
            f"{', '.join(settings.mailboxes)}; messages are archived under var/demo/. "
            "Ctrl-C stops everything.",
            err=True,
        )
        return run_daemon(settings)
    finally:
        _stop(emulator)
    return EXIT_OK


def cmd_emulator(args: argparse.Namespace) -> int:
    """Hand every argument after ``emulator`` to the emulator's own command line."""
    if _emulators_missing("emulator"):
        return EXIT_UNAVAILABLE
    from ews_listener_emulators.cli import main as emulator_main  # noqa: PLC0415 - optional

    try:
        return int(emulator_main(args.emulator_args))
    except SystemExit as exc:  # its --help, or a usage error (argparse exits 2; sysexits: 64)
        return EXIT_OK if exc.code in (None, 0) else EXIT_USAGE


def register(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``emulator`` (its arguments pass through, see ``_main.parse``) and ``demo``."""
    emulator = commands.add_parser(
        "emulator",
        help="run the EWS emulator and token server (ews-listener-emulators; see its --help)",
        add_help=False,
    )
    emulator.set_defaults(func=cmd_emulator, passthrough="emulator_args")

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="the emulator with demo mailboxes and a feed, and the daemon watching them",
    )
    demo.add_argument("--feed", type=float, default=0.5, help="messages per second")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(args)
