"""pyproject.toml builds without a setuptools warning, and the license is an SPDX expression.

Issue 11, point 15: installing warned that the ``project.license`` TOML table is deprecated and
that such builds stop being supported after 2027-02-18.

Issue 12: the emulators are a distribution of their own (emulators/pyproject.toml), so that a
production install carries neither their code nor trustme; they import nothing of ``listener``.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests import REPO

# Builds the metadata with the setuptools of this environment, every warning an error.
_METADATA = """
import sys, warnings
warnings.simplefilter("error")
from setuptools import build_meta
print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))
"""


def test_license_is_an_spdx_string_and_setuptools_can_read_it() -> None:
    """``license = "Apache-2.0"``, and the build backend asked for is one that reads it (77)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert "setuptools>=77" in project["build-system"]["requires"]
    assert "setuptools>=77" in project["project"]["optional-dependencies"]["dev"]


def _metadata(project: Path, package: str, tmp_path: Path) -> str:
    """METADATA of ``project`` (pyproject.toml, README.md, ``package``), warnings as errors."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(project / name, src / name)
    shutil.copytree(project / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "meta"
    out.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _METADATA, str(out)],
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return (out / done.stdout.strip().splitlines()[-1] / "METADATA").read_text()


def _requires(metadata: str) -> set[str]:
    """The names of the distributions an install pulls in (extras left out)."""
    return {
        re.split(r"[\s<>=!~;\[]", line.partition(":")[2].strip())[0].lower()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }


def test_metadata_builds_without_a_warning(tmp_path: Path) -> None:
    """The metadata builds with warnings as errors and says ``License-Expression: Apache-2.0``."""
    metadata = _metadata(REPO, "listener", tmp_path)
    assert "License-Expression: Apache-2.0" in metadata


def test_a_production_install_pulls_in_no_emulator(tmp_path: Path) -> None:
    """ews-listener requires neither trustme nor the emulators (issue 12)."""
    requires = _requires(_metadata(REPO, "listener", tmp_path))
    assert "exchangelib" in requires  # the parsing sees the real list
    assert requires.isdisjoint({"trustme", "ews-listener-emulators"})


def test_the_emulators_build_and_require_what_they_import(tmp_path: Path) -> None:
    """ews-listener-emulators builds without a warning and requires trustme, not ews-listener."""
    metadata = _metadata(REPO / "emulators", "ews_listener_emulators", tmp_path)
    assert "License-Expression: Apache-2.0" in metadata
    assert _requires(metadata) == {
        "lxml",
        "pyjwt",
        "cryptography",
        "trustme",
        "openapi-schema-validator",
    }


def test_the_emulators_import_nothing_of_the_listener() -> None:
    """No module of the emulators imports ``listener`` (DESIGN.md: "nothing of the above")."""
    package = REPO / "emulators" / "ews_listener_emulators"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(REPO)}:{node.lineno}: {name}"
                for name in names
                if name == "listener" or name.startswith("listener.")
            ]
    assert offenders == []
    assert len(list(package.rglob("*.py"))) > 20  # the walk sees the package
