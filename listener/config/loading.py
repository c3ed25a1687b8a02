"""Loading: TOML plus environment overrides, every problem reported as a ``ConfigIssue``."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import EnvSettingsSource

from listener.config.models import (
    ENV_CONFIG,
    ENV_PREFIX,
    NAME_PATTERN,
    ClusterConfig,
    CredentialConfig,
    MailboxConfig,
    NotificationsConfig,
    ServiceConfig,
    Settings,
    StateConfig,
    cluster_problems,
    default_state_url,
    inherit_env_problems,
    notification_problems,
    reference_problems,
    source_problems,
)
from listener.errors import ListenerError
from listener.handlers.config import HandlerConfig

__all__ = ["ConfigError", "ConfigIssue", "load_settings"]

# Values under these keys are shown masked in issues ("anything under secret/password/value/token").
_SECRET_KEYS = frozenset({"secret", "password", "value", "token", "secret_id", "client_secret"})
# Tables whose values are often credentials: webhook headers (API keys), command environments.
_MASKED_TABLES = frozenset({"headers", "env"})
_QUERY_VALUE = re.compile(r"([?&][^=&#]+=)[^&#]*")
# Broker URLs may carry a password in their user info (refused, but shown in the refusal).
_USERINFO_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: where (file, dotted location), the value (masked when secret) and the fix."""

    file: str | None
    location: str
    value: str | None
    message: str
    env_var: str | None = None

    def __str__(self) -> str:
        where = self.file or "<configuration>"
        if self.env_var:
            where = f"environment variable {self.env_var}" + (
                f" (overrides {self.file})" if self.file else ""
            )
        head = f"{where}: {self.location}" if self.location else where
        shown = f" (got {self.value})" if self.value is not None else ""
        return f"{head}: {self.message}{shown}"


class ConfigError(ListenerError):
    """The configuration is invalid; ``issues`` holds every problem found."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        count = len(self.issues)
        lines = [f"{count} configuration problem{'s' if count != 1 else ''}:"]
        lines += [f"  - {issue}" for issue in self.issues]
        super().__init__("\n".join(lines))


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment parsing (prefix, ``__`` nesting, JSON) over a mapping."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._given = env
        super().__init__(
            Settings, case_sensitive=False, env_prefix=ENV_PREFIX, env_nested_delimiter="__"
        )

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {key.lower(): value for key, value in self._given.items()}

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        """JSON when it parses, else the text itself: ``SCOPES=https://…/.default`` is a valid
        space-delimited scope list, and any other mistake is reported by validation at its
        location, naming the variable (pydantic-settings would abort on the first one)."""
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            return value


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (TOML; None: only the environment) and ``EWS_LISTENER_…`` overrides.

    Raises ``ConfigError`` listing every problem, each with the file, the dotted location, the
    value (secrets masked), what was expected, and the environment variable it came from.
    """
    env = os.environ if env is None else env
    file = str(path) if path is not None else None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                [
                    ConfigIssue(
                        file,
                        "",
                        None,
                        f"the configuration file does not exist (set --config or {ENV_CONFIG})",
                    )
                ]
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                [ConfigIssue(file, "", None, f"cannot read the file: {exc}")]
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([ConfigIssue(file, "", None, f"invalid TOML: {exc}")]) from None
    issues: list[ConfigIssue] = []
    env_paths = _env_paths(env, issues)
    try:
        overrides = _MappingEnvSource(env)()
    except Exception as exc:  # pydantic-settings raises SettingsError or ValueError
        issues.append(ConfigIssue(None, "", None, f"environment overrides: {exc}"))
        overrides = {}
    data = _merge(data, overrides)
    data.setdefault("state", {})
    if isinstance(data["state"], dict) and "url" not in data["state"]:
        data["state"]["url"] = default_state_url(env)
    issues += _validate_sections(data, file, env_paths)
    if issues:
        raise ConfigError(issues)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:  # cross-checks above should have caught it; be safe
        raise ConfigError(_issues(exc, data, (), file, env_paths)) from None


def _env_paths(env: Mapping[str, str], issues: list[ConfigIssue]) -> dict[tuple[str, ...], str]:
    """Dotted path (lower-case) → the variable that sets it; ``…__…`` ones of unknown sections
    become issues."""
    paths: dict[tuple[str, ...], str] = {}
    sections = set(Settings.model_fields)
    for name in env:
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == ENV_CONFIG:
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if path[0] not in sections and len(path) == 1:
            # Not ours: other variables share the prefix (the command handler's
            # EWS_LISTENER_MAILBOX, test switches). Only a nested one is surely a typo.
            continue
        if path[0] not in sections:
            issues.append(
                ConfigIssue(
                    None,
                    path[0],
                    None,
                    f"unknown section (expected "
                    f"{ENV_PREFIX}{{{','.join(sorted(s.upper() for s in sections))}}}__…)",
                    env_var=name,
                )
            )
            continue
        paths[path] = name
    return paths


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


_SECTIONS: dict[str, TypeAdapter[Any]] = {}


def _adapter(name: str) -> TypeAdapter[Any]:
    if not _SECTIONS:
        _SECTIONS.update(
            credentials=TypeAdapter(CredentialConfig),
            mailboxes=TypeAdapter(MailboxConfig),
            handlers=TypeAdapter(HandlerConfig),
            state=TypeAdapter(StateConfig),
            service=TypeAdapter(ServiceConfig),
            cluster=TypeAdapter(ClusterConfig),
            notifications=TypeAdapter(NotificationsConfig),
        )
    return _SECTIONS[name]


def _validate_sections(
    data: dict[str, Any], file: str | None, env_paths: Mapping[tuple[str, ...], str]
) -> list[ConfigIssue]:
    """Validate each table on its own so that one bad entry does not hide the others' errors."""
    issues: list[ConfigIssue] = []
    for key in data:
        if key not in Settings.model_fields:
            issues.append(
                _issue(
                    file,
                    (key,),
                    None,
                    f"unknown section [{key}] (expected {', '.join(Settings.model_fields)})",
                    env_paths,
                )
            )
    valid: dict[str, dict[str, Any]] = {"credentials": {}, "mailboxes": {}, "handlers": {}}
    for section in ("credentials", "mailboxes", "handlers"):
        table = data.get(section, {})
        if not isinstance(table, dict):
            issues.append(
                _issue(file, (section,), None, "must be a table of named entries", env_paths)
            )
            continue
        for name, entry in table.items():
            if not NAME_PATTERN.match(name):
                issues.append(
                    _issue(
                        file,
                        (section, name),
                        None,
                        "names must be lower-case letters, digits, '_' or '-' (environment "
                        "overrides match names case-insensitively, so upper-case names could "
                        "not be overridden)",
                        env_paths,
                    )
                )
            try:
                valid[section][name] = _adapter(section).validate_python(entry)
            except ValidationError as exc:
                issues += _issues(exc, entry, (section, name), file, env_paths)
    checked: dict[str, Any] = {}
    for section in ("state", "service", "cluster", "notifications"):
        try:
            checked[section] = _adapter(section).validate_python(data.get(section, {}))
        except ValidationError as exc:
            issues += _issues(exc, data.get(section), (section,), file, env_paths)
    if "state" in checked and "cluster" in checked:
        for loc, message in cluster_problems(checked["cluster"], checked["state"].url):
            shown = _show(checked["cluster"].enabled, loc)
            issues.append(_issue(file, loc, shown, message, env_paths))
    tables = {
        key: data[key] if isinstance(data.get(key), dict) else {}
        for key in ("credentials", "handlers", "mailboxes")
    }
    for loc, message in reference_problems(
        tables["credentials"], tables["handlers"], tables["mailboxes"]
    ):
        issues.append(_issue(file, loc, None, message, env_paths))
    for loc, message in source_problems(valid["credentials"], valid["mailboxes"]):
        issues.append(_issue(file, loc, None, message, env_paths))
    for loc, message in inherit_env_problems(data):
        issues.append(_issue(file, loc, None, message, env_paths))
    try:
        notifications = NotificationsConfig.model_validate(data.get("notifications", {}))
        service = ServiceConfig.model_validate(data.get("service", {}))
    except ValidationError:
        pass  # already reported above, field by field
    else:
        for loc, message in notification_problems(notifications, valid["mailboxes"], service):
            value, found = _at(data, loc)
            given = _show(value, loc) if found and not isinstance(value, dict) else None
            issues.append(_issue(file, loc, given, message, env_paths))
    return issues


def _at(data: Any, loc: tuple[str, ...]) -> tuple[Any, bool]:
    """The value at ``loc`` in the raw configuration, and whether it is there."""
    current = data
    for part in loc:
        if not isinstance(current, dict) or part not in current:
            return None, False
        current = current[part]
    return current, True


def _issues(
    exc: ValidationError,
    data: Any,
    prefix: tuple[str, ...],
    file: str | None,
    env_paths: Mapping[tuple[str, ...], str],
) -> list[ConfigIssue]:
    out = []
    for error in exc.errors(include_url=False):
        loc, value, found = _clean_loc(data, error["loc"], error["type"])
        message = _message(error, loc)
        shown = _show(value, prefix + loc) if found else None
        out.append(_issue(file, prefix + loc, shown, message, env_paths))
    return out


def _clean_loc(data: Any, loc: tuple[Any, ...], kind: str) -> tuple[tuple[str, ...], Any, bool]:
    """Drop pydantic's union-tag segments: keep only the keys that walk the input."""
    path: list[str] = []
    current, found = data, True
    for index, segment in enumerate(loc):
        last = index == len(loc) - 1
        if isinstance(current, dict) and segment in current:
            path.append(str(segment))
            current = current[segment]
        elif isinstance(current, list | tuple) and isinstance(segment, int):
            path.append(str(segment))
            current = current[segment] if segment < len(current) else None
        elif last and kind == "missing":
            path.append(str(segment))
            found = False
        elif isinstance(segment, int) or not isinstance(current, dict | list | tuple):
            continue
    return tuple(path), current, found


def _message(error: Any, loc: tuple[str, ...] = ()) -> str:
    kind, msg = error["type"], str(error["msg"])
    secret_place = bool(loc) and loc[-1] in _SECRET_KEYS
    if kind == "missing":
        return "required, but missing"
    if kind == "extra_forbidden":
        return "unknown key: check its spelling and section (see config/example.toml)"
    if kind == "string_too_short":
        return "must not be empty"
    if kind in ("model_attributes_type", "dict_type", "model_type") and secret_place:
        return (
            "must be a table saying where the secret is, e.g. "
            '{ source = "env", name = "SALES_SECRET" } (sources: inline, env, file, '
            "azure_key_vault, hashicorp_vault)"
        )
    if kind in ("model_attributes_type", "dict_type", "model_type"):
        return "must be a table (TOML [section] or { key = value, ... })"
    if kind == "union_tag_invalid":
        tags = error.get("ctx", {}).get("expected_tags", "")
        field = error.get("ctx", {}).get("discriminator", "'type'").strip("'")
        return f"unknown {field} {error.get('ctx', {}).get('tag')!r}: expected one of {tags}"
    if kind == "union_tag_not_found":
        field = error.get("ctx", {}).get("discriminator", "'type'").strip("'")
        return f"needs a {field!r} key saying which kind it is"
    return msg.removeprefix("Value error, ")


def _show(value: Any, loc: tuple[str, ...]) -> str:
    if any(part in _SECRET_KEYS or part in _MASKED_TABLES for part in loc):
        return "'**********'"
    if isinstance(value, str) and "://" in value:
        # Webhook URLs often carry a signature in the query (Logic Apps' ?sig=…).
        value = _USERINFO_PASSWORD.sub(r"\1**********@", value)
        return repr(_QUERY_VALUE.sub(r"\1**********", value))
    if isinstance(value, dict | list):
        return "a table" if isinstance(value, dict) else "a list"
    return repr(value)


def _issue(
    file: str | None,
    loc: tuple[str, ...],
    value: str | None,
    message: str,
    env_paths: Mapping[tuple[str, ...], str],
) -> ConfigIssue:
    lowered = tuple(part.lower() for part in loc)
    env_var = None
    for path, name in env_paths.items():
        if lowered[: len(path)] == path:
            env_var = name
            break
    return ConfigIssue(file, ".".join(loc), value, message, env_var)
