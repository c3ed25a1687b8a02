"""Nothing outside a mail source imports its protocol library (DESIGN.md, "Packages").

exchangelib (and requests-oauthlib, which only it needs) belong to ``listener/sources/ews/``;
the Graph client to ``listener/sources/graph/``; msal to ``listener/auth/``. The pipeline
(poller, app, service, CLI, store, handlers) sees ``MailSource`` and typed errors only (issue 13,
point 1).
The check reads every module's imports, so a new one that crosses a boundary fails here.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO

PACKAGE = REPO / "listener"
# module prefix → the only package (path under listener/) allowed to import it
OWNERS = {
    "exchangelib": "sources/ews",
    "requests_oauthlib": "sources/ews",
    "listener.sources.ews": "sources/ews",
    "listener.sources.graph": "sources/graph",
    "msal": "auth",
}
# Imported by name only, where a factory is chosen by configuration.
REGISTRY = PACKAGE / "sources" / "__init__.py"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _crossings(package: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        where = path.relative_to(package).as_posix()
        for name in _imports(path):
            for prefix, owner in OWNERS.items():
                if (name == prefix or name.startswith(prefix + ".")) and not where.startswith(
                    owner + "/"
                ):
                    found.append(f"listener/{where} imports {name} (only listener/{owner}/ may)")
    return found


def test_no_module_imports_another_packages_protocol_library() -> None:
    assert _crossings() == []


@pytest.mark.parametrize("kind", ["ews", "graph"])
def test_sources_are_registered_by_name_not_imported(kind: str) -> None:
    """The factory registry names its sources as strings: loading the pipeline loads neither."""
    assert f"listener.sources.{kind}." in REGISTRY.read_text()
    assert not any(n.startswith("listener.sources.") for n in _imports(REGISTRY))


def test_the_checker_sees_a_crossing(tmp_path: Path) -> None:
    """The check itself can fail: a module outside sources/ews importing exchangelib."""
    (tmp_path / "sources" / "ews").mkdir(parents=True)
    (tmp_path / "sources" / "ews" / "source.py").write_text("import exchangelib\n")
    (tmp_path / "poller.py").write_text("from exchangelib import Account\n")
    assert _crossings(tmp_path) == [
        "listener/poller.py imports exchangelib (only listener/sources/ews/ may)"
    ]


def test_once_does_not_import_the_scheduler() -> None:
    """``ews-listener once`` schedules nothing: its modules leave APScheduler (whose import scans
    every installed distribution's entry points) to ``listener.scheduler``, which ``run`` loads."""
    code = (
        "import sys, listener.cli._main, listener.daemon, listener.app, listener.cluster;"
        "print(sorted({m.split('.')[0] for m in sys.modules if m.startswith('apscheduler')}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]", out
    code = "import sys, listener.scheduler; print('apscheduler' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "True", out  # the check above can fail
