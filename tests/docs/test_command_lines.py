"""Every command line the documentation and the deployment files show parses, and runs where cheap.

Issue 11, point 13: ``ews-listener emulator --seed demo`` (the emulator service of
deploy/docker/compose.yaml) was refused by the parser on 3.11 to 3.13 while every file showed it.
The lines are read from the files themselves, so a renamed flag or command fails here:

- Markdown (README.md, benchmarks/README.md, emulators/README.md): lines of fenced code blocks
  that start with ``ews-listener``, ``python -m listener``, ``make`` or ``python benchmarks/….py``
  (any path to the interpreter), and inline code spans that start with one of those (only their
  command words are checked: spans use notation such as ``once|run`` and
  ``NAME [--mailbox ADDRESS]``). The emulators' own command, ``ews-listener-emulators ARGS`` or
  ``python -m ews_listener_emulators ARGS``, is checked as ``ews-listener emulator ARGS``: it is
  the same command line (issue 12).
- config/*.toml and deploy/kubernetes/config.toml: comment lines indented like a code block that
  start with a command (``#   ews-listener check-config …``), and inline spans in comments.
- deploy/systemd: every ``Exec*=``; deploy/docker/*Dockerfile: ``ENTRYPOINT`` + ``CMD`` and the
  ``HEALTHCHECK``'s ``CMD``; compose.yaml: every ``command:``, after the ``ENTRYPOINT`` of the
  service's own Dockerfile.
- Makefile recipes that run ``$(BIN)/ews-listener`` or ``$(BIN)/python benchmarks/…``.

A file that should show commands and yields none fails (``test_each_file_shows_commands``): the
extraction cannot silently go blind.

Checks: an ``ews-listener`` line parses with ``listener.cli.parse`` (the emulator's arguments also
with the emulator's parser) and ``LINE --help`` exits 0; ``check-config`` of a file in the
repository runs for real. A benchmark line is parsed by the script's own parser (the script is
run until its ``parse_args`` returns). ``make TARGET`` is ``make -n TARGET``.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from listener.cli import main, parse
from listener.errors import EXIT_OK
from tests import REPO

# Sample values for the placeholders usage lines show (``--seed N``). Add one here when a doc
# line uses a new placeholder; an unknown one fails loudly.
PLACEHOLDERS = {"N": "1"}

EWS_LISTENER = "ews-listener"
EMULATORS = "ews-listener-emulators"  # checked as `ews-listener emulator …`
MAKE = "make"
BENCHMARK = "benchmark"


@dataclass(frozen=True)
class CommandLine:
    """One command shown in a file: the program and its arguments as a user would type them."""

    where: str  # "README.md:64"
    program: str  # EWS_LISTENER, MAKE or BENCHMARK
    argv: tuple[str, ...]  # after the program (for BENCHMARK: the script path first)
    full: bool  # a whole line (parse it); False: an inline span (check its command words)

    def __str__(self) -> str:
        return f"{self.where}: {self.program} {shlex.join(self.argv)}"


# --- reading the lines out of the files ---------------------------------------------------------

_PYTHON = re.compile(r"^(?:\S*/)?python(?:3(?:\.\d+)?)?$")
_SEPARATORS = {"|", "||", "&&", ";"}


def _commands(tokens: list[str], where: str, *, full: bool) -> Iterator[CommandLine]:
    """The commands of our programs in a tokenised shell line (pipelines and ``&&`` split)."""
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token not in _SEPARATORS:
            segment.append(token)
            continue
        while segment and re.match(r"^\w+=", segment[0]):  # VAR=value ews-listener ...
            segment.pop(0)
        if segment:
            head = segment[0].rsplit("/", 1)[-1]
            if head == EWS_LISTENER:
                yield CommandLine(where, EWS_LISTENER, tuple(segment[1:]), full)
            elif head == EMULATORS:
                yield CommandLine(where, EWS_LISTENER, ("emulator", *segment[1:]), full)
            elif head == MAKE:
                yield CommandLine(where, MAKE, tuple(segment[1:]), full)
            elif _PYTHON.match(head) and segment[1:3] == ["-m", "listener"]:
                yield CommandLine(where, EWS_LISTENER, tuple(segment[3:]), full)
            elif _PYTHON.match(head) and segment[1:3] == ["-m", "ews_listener_emulators"]:
                yield CommandLine(where, EWS_LISTENER, ("emulator", *segment[3:]), full)
            elif _PYTHON.match(head) and len(segment) > 1 and segment[1].startswith("benchmarks/"):
                yield CommandLine(where, BENCHMARK, tuple(segment[1:]), full)
        segment = []


def _split(text: str) -> list[str]:
    return shlex.split(text, comments=True)


def _inline_spans(text: str, where: str) -> Iterator[CommandLine]:
    for span in re.findall(r"`([^`\n]+)`", text):
        try:
            tokens = _split(span)
        except ValueError:  # not shell syntax (an unbalanced quote in prose)
            continue
        # A bare program name (`make`, `ews-listener`) names the program, not a command.
        yield from (line for line in _commands(tokens, where, full=False) if line.argv)


def from_markdown(path: Path) -> list[CommandLine]:
    """Fenced code block lines and inline code spans that start with one of our programs."""
    found: list[CommandLine] = []
    fence: str | None = None
    pending, pending_at = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        where = f"{path.relative_to(REPO)}:{number}"
        stripped = raw.strip()
        marker = re.match(r"^(`{3,}|~{3,})", stripped)
        if marker:
            fence = None if fence and stripped.startswith(fence) else fence or marker.group(1)
            continue
        if fence is None:
            found.extend(_inline_spans(raw, where))
            continue
        if not pending:
            pending_at = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        line, pending = pending + stripped, ""
        found.extend(_commands(_split(line), f"{path.relative_to(REPO)}:{pending_at}", full=True))
    assert fence is None, f"{path}: a code block is never closed"
    return found


def from_toml_comments(path: Path) -> list[CommandLine]:
    """Comment lines indented like a code block (``#   ews-listener …``), and inline spans."""
    found: list[CommandLine] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        where = f"{path.relative_to(REPO)}:{number}"
        comment = raw.partition("#")[2] if raw.lstrip().startswith("#") else ""
        text = comment.strip()
        indented = comment.startswith("  ")  # "# ews-listener example configuration." is prose
        if indented and text.startswith((f"{EWS_LISTENER} ", f"{MAKE} ")):
            found.extend(_commands(_split(text), where, full=True))
        else:
            found.extend(_inline_spans(comment, where))
    return found


def from_systemd_unit(path: Path) -> list[CommandLine]:
    """Every ``Exec*=`` line; systemd's prefixes (``-@:+!``) and ``/usr/bin/env`` dropped."""
    found: list[CommandLine] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        match = re.match(r"^Exec\w*=[-@:+!]*(.+)$", raw.strip())
        if match:
            tokens = _split(match.group(1))
            if tokens and tokens[0].rsplit("/", 1)[-1] == "env":
                tokens = tokens[1:]
            found.extend(_commands(tokens, f"{path.relative_to(REPO)}:{number}", full=True))
    return found


def _instructions(path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    pending, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if not pending and (not raw.strip() or raw.lstrip().startswith("#")):
            continue
        if not pending:
            start = number
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + raw).strip().partition(" ")
        pending = ""
        yield start, keyword.upper(), rest.strip()


def _exec_or_shell(text: str) -> list[str]:
    if text.startswith("["):
        return [str(token) for token in json.loads(text)]
    return _split(text)


def dockerfile_entrypoint(path: Path) -> list[str]:
    """The last ``ENTRYPOINT`` of the Dockerfile (the final stage's)."""
    entrypoints = [rest for _, keyword, rest in _instructions(path) if keyword == "ENTRYPOINT"]
    assert entrypoints, f"{path}: no ENTRYPOINT"
    return _exec_or_shell(entrypoints[-1])


def from_dockerfile(path: Path) -> list[CommandLine]:
    """``ENTRYPOINT`` + ``CMD`` of the final stage, and the ``HEALTHCHECK``'s ``CMD``."""
    found: list[CommandLine] = []
    where = str(path.relative_to(REPO))
    cmd: tuple[int, list[str]] | None = None
    for number, keyword, rest in _instructions(path):
        if keyword == "FROM":
            cmd = None
        elif keyword == "CMD":
            cmd = (number, _exec_or_shell(rest))
        elif keyword == "HEALTHCHECK":
            _, marker, probe = rest.partition("CMD ")
            if marker:
                tokens = _exec_or_shell(probe.strip())
                found.extend(_commands(tokens, f"{where}:{number}", full=True))
    if cmd is not None:
        tokens = [*dockerfile_entrypoint(path), *cmd[1]]
        found.extend(_commands(tokens, f"{where}:{cmd[0]}", full=True))
    return found


def from_compose(path: Path) -> list[CommandLine]:
    """Every ``command:`` (flow or block list), run by its service's ``ENTRYPOINT``.

    A service's image is the ``dockerfile:`` of its ``build:``, or of the service that builds
    the same ``image:``; the file's dockerfiles are relative to the repository root.
    """
    found: list[CommandLine] = []
    lines = path.read_text().splitlines()
    built: dict[str, str] = {}  # image → dockerfile
    services: dict[str, tuple[str | None, str | None]] = {}  # service → (image, dockerfile)
    service: str | None = None
    for raw in lines:
        header = re.match(r"^  ([\w-]+):\s*$", raw)
        if header:
            service = header.group(1)
            services[service] = (None, None)
        elif service and (setting := re.match(r"^\s+(image|dockerfile):\s*(\S+)", raw)):
            image, dockerfile = services[service]
            if setting.group(1) == "image":
                image = setting.group(2)
            else:
                dockerfile = setting.group(2)
            services[service] = (image, dockerfile)
        elif re.match(r"^\S", raw):
            service = None
    for image, dockerfile in services.values():
        if image and dockerfile:
            built[image] = dockerfile
    service = None
    for number, raw in enumerate(lines, 1):
        header = re.match(r"^  ([\w-]+):\s*$", raw)
        if header:
            service = header.group(1)
        match = re.match(r"^(\s*)command:\s*(.*)$", raw)
        if not match:
            continue
        indent, value = len(match.group(1)), match.group(2).split(" #")[0].strip()
        if value.startswith("["):
            tokens = [str(token) for token in json.loads(value)]
        elif value:
            tokens = _split(value)
        else:
            tokens = []
            for item in lines[number:]:
                if not item.strip() or item.strip().startswith("#"):
                    continue
                item_match = re.match(r"^(\s*)- (.*)$", item)
                if not item_match or len(item_match.group(1)) < indent:
                    break
                tokens.append(_split(item_match.group(2))[0])
        where = f"{path.relative_to(REPO)}:{number}"
        assert service in services, f"{where}: a command outside a service"
        image, dockerfile = services[service]
        dockerfile = dockerfile or built.get(image or "")
        assert dockerfile, f"{where}: service {service} names no dockerfile to take ENTRYPOINT from"
        entrypoint = dockerfile_entrypoint(REPO / dockerfile)
        found.extend(_commands([*entrypoint, *tokens], where, full=True))
    return found


def from_makefile(path: Path) -> list[CommandLine]:
    """Recipe lines that run ``$(BIN)/ews-listener`` or ``$(BIN)/python benchmarks/…``."""
    found: list[CommandLine] = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        if raw.startswith("\t") and "$(BIN)/" in raw:
            tokens = _split(raw.strip().lstrip("@-").replace("$(BIN)/", ".venv/bin/"))
            found.extend(
                line
                for line in _commands(tokens, f"{path.relative_to(REPO)}:{number}", full=True)
                if line.program != MAKE
            )
    return found


def _extract(relative: str) -> list[CommandLine]:
    path = REPO / relative
    if path.suffix == ".md":
        return from_markdown(path)
    if path.suffix == ".toml":
        return from_toml_comments(path)
    if path.suffix == ".service":
        return from_systemd_unit(path)
    if path.name == "Dockerfile" or path.suffix == ".Dockerfile":
        return from_dockerfile(path)
    if path.suffix in {".yaml", ".yml"}:
        return from_compose(path)
    if path.name == "Makefile":
        return from_makefile(path)
    raise AssertionError(f"no extractor for {relative}")


# Every file that shows commands; each must yield at least one (see the module docstring).
SOURCES = [
    "README.md",
    "benchmarks/README.md",
    "emulators/README.md",
    "config/example.toml",
    "config/demo.toml",
    "config/graph.toml",
    "config/ews-streaming.toml",
    "config/cluster.toml",
    "deploy/systemd/ews-listener.service",
    "deploy/docker/Dockerfile",
    "deploy/docker/emulators.Dockerfile",
    "deploy/docker/compose.yaml",
    "deploy/kubernetes/config.toml",
    "Makefile",
]
LINES = [line for source in SOURCES for line in _extract(source)]


def _ids(line: CommandLine) -> str:
    return str(line)


@pytest.mark.parametrize("source", SOURCES)
def test_each_file_shows_commands(source: str) -> None:
    """The extraction finds commands in every file that shows some (it cannot go blind)."""
    found = [line for line in LINES if line.where.split(":")[0] == source]
    assert found, f"{source}: no command line found; did its format change? (see the docstring)"


def test_the_lines_that_broke_are_extracted() -> None:
    """The compose emulator, the unit's ExecStart and the image's CMD and HEALTHCHECK are seen."""
    shown = {(line.where.split(":")[0], line.argv) for line in LINES}
    compose = "deploy/docker/compose.yaml"
    assert any(s == compose and argv[:3] == ("emulator", "--seed", "demo") for s, argv in shown)
    assert any(s == compose and argv[:1] == ("run",) for s, argv in shown)
    unit = "deploy/systemd/ews-listener.service"
    assert (unit, ("run", "--config", "/etc/ews-listener/config.toml")) in shown
    image = "deploy/docker/Dockerfile"
    assert (image, ("health",)) in shown
    emulators = "deploy/docker/emulators.Dockerfile"  # its ENTRYPOINT is the emulators' command
    assert any(s == emulators and argv[:3] == ("emulator", "--seed", "demo") for s, argv in shown)
    assert (image, ("run", "--config", "/etc/ews-listener/config.toml")) in shown


# --- checking them -----------------------------------------------------------------------------


def _fill(line: CommandLine) -> list[list[str]]:
    """Usage notation to arguments, one list per alternative.

    ``[--seed N]`` → ``--seed 1``; ``[--handler directory|bytes]`` → one argv with each choice.
    """
    argvs: list[list[str]] = [[]]
    for shown in line.argv:
        token = shown.strip("[]")
        if re.fullmatch(r"[A-Z][A-Z_]*", token):
            assert token in PLACEHOLDERS, f"{line}: placeholder {token}: add it to PLACEHOLDERS"
            token = PLACEHOLDERS[token]
        choices = [choice for choice in token.split("|") if choice] if token else []
        if choices:
            argvs = [[*argv, choice] for argv in argvs for choice in choices]
    return argvs


def _command_words(line: CommandLine) -> list[list[str]]:
    """An inline span's command words, each alternative spelled out (``once|run``, ``a/b``)."""
    paths: list[list[str]] = [[]]
    for token in line.argv:
        if token.startswith(("-", "[", "<")) or re.fullmatch(r"[A-Z][A-Z_.]*", token):
            break
        choices = re.split(r"[|/]", token)
        paths = [[*path, choice] for path in paths for choice in choices if choice]
    return paths


FULL = [line for line in LINES if line.full]
INLINE = [line for line in LINES if not line.full]


@pytest.mark.parametrize("line", [x for x in FULL if x.program == EWS_LISTENER], ids=_ids)
def test_ews_listener_line_parses(
    line: CommandLine, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``ews-listener`` line parses (emulator arguments too), and its ``--help`` exits 0."""
    [argv] = _fill(line)  # a command line to copy, not usage notation
    try:
        args = parse(argv)
    except SystemExit as exc:
        pytest.fail(f"{line}: refused: {capsys.readouterr().err.strip()} (exit {exc.code})")
    assert getattr(args, "func", None) is not None, f"{line}: names no command"
    if args.command == "emulator":
        from ews_listener_emulators.cli import build_parser as emulator_parser

        try:
            emulator_parser().parse_args(args.emulator_args)
        except SystemExit as exc:
            pytest.fail(f"{line}: the emulator refused: {capsys.readouterr().err} ({exc.code})")
    assert main([*argv, "--help"]) == EXIT_OK, f"{line} --help: {capsys.readouterr().err}"
    config = getattr(args, "config", None)
    if args.command == "check-config" and config and (REPO / config).is_file():
        monkeypatch.chdir(REPO)
        assert main(argv) == EXIT_OK, f"{line}: {capsys.readouterr().err}"


@pytest.mark.parametrize("line", [x for x in INLINE if x.program == EWS_LISTENER], ids=_ids)
def test_ews_listener_span_names_commands(
    line: CommandLine, capsys: pytest.CaptureFixture[str]
) -> None:
    """An inline ``ews-listener …`` span names commands that exist (``WORDS --help`` exits 0)."""
    for words in _command_words(line):
        assert main([*words, "--help"]) == EXIT_OK, f"{line}: {words}: {capsys.readouterr().err}"


@pytest.mark.parametrize("line", [x for x in LINES if x.program == MAKE], ids=_ids)
def test_make_target_exists(line: CommandLine) -> None:
    """``make TARGET`` names a target of the Makefile (``make -n`` exits 0)."""
    words = _fill(line)[0] if line.full else _command_words(line)[0]
    targets = [word for word in words if not word.startswith("-")]
    assert targets, f"{line}: no target"
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", *targets],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"{line}: {done.stderr}"


# Runs a benchmark script until its ArgumentParser has parsed the command line, then stops: the
# parser is built inside each script's main(), so this is how to ask it without running it.
_PARSE_ONLY = """
import argparse, runpy, sys
class Parsed(Exception):
    pass
real = argparse.ArgumentParser.parse_args
def parse_args(self, *args, **kwargs):
    real(self, *args, **kwargs)
    raise Parsed
argparse.ArgumentParser.parse_args = parse_args
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, script.rsplit("/", 1)[0])
try:
    runpy.run_path(script, run_name="__main__")
except Parsed:
    raise SystemExit(0)
raise SystemExit("the script ended without parsing a command line")
"""


@pytest.mark.parametrize("line", [x for x in LINES if x.program == BENCHMARK], ids=_ids)
def test_benchmark_line_parses(line: CommandLine) -> None:
    """``python benchmarks/X.py FLAGS`` is accepted by that script's own parser."""
    for argv in _fill(line) if line.full else [[line.argv[0]]]:
        assert (REPO / argv[0]).is_file(), f"{line}: no such script"
        done = subprocess.run(
            [sys.executable, "-c", _PARSE_ONLY, *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{shlex.join(argv)} ({line.where}): {done.stderr[-2000:]}"


# --- the line that broke, run for real ---------------------------------------------------------


def test_emulator_with_seed_demo_starts(tmp_path: Path) -> None:
    """``ews-listener emulator --seed demo …`` (compose's emulator) starts, gets ready, exits 0."""
    compose = ["emulator", "--seed", "demo", "--feed", "1", "--client-state-dir", "/shared"]
    process = subprocess.Popen(
        [sys.executable, "-m", "listener", *compose, "--state-dir", str(tmp_path), "--quiet"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "emulator.json").exists():
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the emulator did not get ready in 60 s"
            time.sleep(0.1)
        assert "/shared/ca.pem" in (tmp_path / "listener.toml").read_text()
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
