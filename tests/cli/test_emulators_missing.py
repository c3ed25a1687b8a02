"""``ews-listener emulator`` and ``demo`` without the emulators installed say what to install.

Issue 12: the emulators are a distribution of their own (``emulators/``), left out of a
production install. The CLI runs for real in a subprocess whose import system cannot find
``ews_listener_emulators`` (a finder first on ``sys.meta_path`` refuses it, as a missing package
would be refused); nothing of the CLI is replaced. The same commands in a fresh venv that holds
only the production wheel: ``test_production_install_has_no_emulators`` in tests/deploy.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from listener.errors import EXIT_UNAVAILABLE

_WITHOUT_EMULATORS = """
import sys

class NoEmulators:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "ews_listener_emulators":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoEmulators())
from listener.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    "argv",
    [["emulator", "--seed", "demo"], ["emulator", "--help"], ["demo", "--feed", "1"]],
    ids=" ".join,
)
def test_missing_emulators_name_the_package_and_exit_69(argv: list[str], tmp_path: Path) -> None:
    """Exit 69 (EX_UNAVAILABLE), the package to install and the checkout's way; nothing starts."""
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EMULATORS, *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_UNAVAILABLE, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{argv[0]}: the emulators are not installed" in done.stderr
    assert "pip install ews-listener-emulators" in done.stderr
    assert "pip install -e ./emulators" in done.stderr
    assert list(tmp_path.iterdir()) == []  # demo made no var/emulator, started nothing
