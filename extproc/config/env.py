"""``${VAR}`` / ``${VAR:-default}`` expansion, the environment overrides, and config-relative paths."""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from extproc.config.checks import KeySpec, is_secret
from extproc.config.verification import ENTRY_SECRET_ENV
from extproc.errors import ConfigError

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
"""A ``${VAR}`` or ``${VAR:-default}`` reference (group 1 the name, group 2 the default)."""
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}

# Environment variables that override deployment / security settings of the file.
ENV_OVERRIDES: dict[str, str] = {
    "SEMANTIC_CACHE_GRPC_ADDRESS": "server.grpc_address",
    "SEMANTIC_CACHE_METRICS_ADDRESS": "server.metrics_address",
    "SEMANTIC_CACHE_SCOPE_MODE": "scope_mode",
    "SEMANTIC_CACHE_SCOPE_HEADER": "scope_header",
    "SEMANTIC_CACHE_ADMIN_ADDRESS": "server.admin_address",
    "SEMANTIC_CACHE_REVISION": "revision",
    "SEMANTIC_CACHE_REVISION_HEADER": "revision_header",
    "SEMANTIC_CACHE_ADMIN_ALLOWED_HOSTS": "server.admin_allowed_hosts",
    "SEMANTIC_CACHE_ADMIN_ALLOWED_ORIGINS": "server.admin_allowed_origins",
    ENTRY_SECRET_ENV: "verification.entry_secret",
}
LIST_OVERRIDES = frozenset({"server.admin_allowed_hosts", "server.admin_allowed_origins"})
"""Overrides whose variable holds a comma-separated list."""


class EnvText(str):
    """A config value that was exactly one ``${VAR}`` reference: the variable's text, unchanged.

    It is never parsed as YAML (a password such as ``!x`` or ``Pa55 #word`` stays what it is);
    readers of number and boolean settings convert it with :func:`env_typed`.
    """

    ref: str
    """The reference as the file names it, without its default (``${TTL}``), for messages."""

    def __new__(cls, text: str, ref: str = "") -> EnvText:
        """The expanded ``text`` of the reference ``ref``."""
        obj = super().__new__(cls, text)
        obj.ref = ref
        return obj


def env_typed(value: EnvText, types: type | tuple[type, ...]) -> Any:
    """``value`` as the first of ``types`` it spells (a string type takes it as is); else ValueError.

    Strict, unlike YAML: an integer is digits, a boolean true/false/yes/no/on/off.
    """
    wanted = types if isinstance(types, tuple) else (types,)
    if str in wanted:
        return str(value)
    text = value.strip()
    if bool in wanted and text.lower() in _BOOLS:
        return _BOOLS[text.lower()]
    if int in wanted and _INT.fullmatch(text):
        return int(text)
    if float in wanted and _FLOAT.fullmatch(text) and math.isfinite(float(text)):
        return float(text)
    raise ValueError(f"{value!r} is not a {'/'.join(t.__name__ for t in wanted)}")


def coerce_section(
    section: Mapping[str, Any], spec: KeySpec, prefix: str, errors: list[str]
) -> dict[str, Any]:
    """``section`` with each ``${VAR}`` value of a scalar key converted to the key's type.

    A value that does not convert gets one message in ``errors`` and is left out, so the
    type check that follows does not report it twice.
    """
    out: dict[str, Any] = {}
    for key, value in section.items():
        if isinstance(value, EnvText) and key in spec:
            types, desc, _ = spec[key]
            wanted = types if isinstance(types, tuple) else (types,)
            if set(wanted) & {str, int, float, bool}:
                try:
                    value = env_typed(value, types)
                except ValueError:
                    shown = "(not shown)" if is_secret(str(key)) else repr(str(value))
                    errors.append(f"{prefix}.{key}: must be {desc}, got {shown} (from {value.ref})")
                    continue
            else:
                value = str(value)  # a list or mapping key: the type check names it a str
        out[key] = value
    return out


def substitute_env(text: str, env: Mapping[str, str], where: str) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in ``text``; an unset VAR without default is an error.

    As in a shell, the default also replaces a variable that is set but empty.
    """

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = env.get(name)
        if value:
            return value
        if default is not None:
            return default
        if value is not None:
            return ""
        raise ConfigError(
            f"{where}: environment variable {name} is not set. "
            f"Set it, or give a default with ${{{name}:-value}}"
        )

    return ENV_REF.sub(substitute, text)


def expand_env(value: Any, path: str, env: Mapping[str, str] | None = None) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree.

    A value that is exactly one reference becomes an :class:`EnvText` holding the exact
    expansion: never re-read as YAML, it is converted only by readers of typed settings,
    so ``${TTL:-60}`` is still an integer and a password stays byte for byte what it was.
    """
    env = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    expanded = substitute_env(value, env, path)
    whole = ENV_REF.fullmatch(value)
    if whole:
        return EnvText(expanded, f"${{{whole.group(1)}}}")
    return expanded


def apply_env_overrides(section: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """``section`` with the :data:`ENV_OVERRIDES` variables that are set (non-empty) applied."""
    section = dict(section)
    for var, key_path in ENV_OVERRIDES.items():
        value = env.get(var)
        if not value:
            continue
        parsed: Any = value.replace(",", " ").split() if key_path in LIST_OVERRIDES else value
        if "." in key_path:
            outer, inner = key_path.split(".", 1)
            current = section.get(outer) or {}
            if not isinstance(current, dict):
                continue  # not a mapping: the section's own check reports it
            nested = dict(current)
            nested[inner] = parsed
            section[outer] = nested
        else:
            section[key_path] = parsed
    return section


_READ_DIGESTS: dict[str, str] = {}
"""path -> sha256 of the bytes :func:`read_yaml` last read there."""


def read_digest(path: str | os.PathLike[str]) -> str | None:
    """The sha256 of ``path``'s bytes as :func:`read_yaml` last read them, or None if it never did.

    A config watcher starts from it: a file edited between reading the settings and starting to
    watch (a ConfigMap updated during a rollout) is then a change, not the baseline."""
    return _READ_DIGESTS.get(str(path))


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; :class:`ConfigError` naming the file, and line:column of a syntax error."""
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    _READ_DIGESTS[str(path)] = hashlib.sha256(raw).hexdigest()
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise ConfigError(f"{where}: not valid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def resolve_relative(path_str: str, config_file: str, key: str) -> Path:
    """Resolve a relative path against the working directory, then the config file's folder."""
    p = Path(path_str)
    if p.is_absolute():
        if p.exists():
            return p
        raise ConfigError(f"semantic_cache.{key}: file {p} does not exist")
    tried = [Path.cwd() / p]
    if config_file and not config_file.startswith("<"):
        tried.append(Path(config_file).resolve().parent / p)
    for candidate in tried:
        if candidate.exists():
            return candidate
    looked = " and ".join(str(t) for t in tried)
    raise ConfigError(f"semantic_cache.{key}: {path_str!r} not found (looked in {looked})")
