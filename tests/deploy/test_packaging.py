"""pyproject.toml builds without a setuptools warning, and the license is an SPDX expression.

Issue 11, point 15: installing warned that the ``project.license`` TOML table is deprecated and
that such builds stop being supported after 2027-02-18.
"""

from __future__ import annotations

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


def test_metadata_builds_without_a_warning(tmp_path: Path) -> None:
    """The metadata builds with warnings as errors and says ``License-Expression: Apache-2.0``."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(
        REPO / "listener", src / "listener", ignore=shutil.ignore_patterns("__pycache__")
    )
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
    metadata = (out / done.stdout.strip().splitlines()[-1] / "METADATA").read_text()
    assert "License-Expression: Apache-2.0" in metadata
