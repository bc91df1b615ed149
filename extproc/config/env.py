"""``${VAR}`` / ``${VAR:-default}`` expansion in config trees, and config-relative paths."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from extproc.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(text: str, env: Mapping[str, str], where: str) -> str:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in ``text``; an unset VAR without default is an error."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{where}: environment variable {name} is not set. "
            f"Set it, or give a default with ${{{name}:-value}}"
        )

    return _ENV_REF.sub(substitute, text)


def expand_env(value: Any, path: str, env: Mapping[str, str] | None = None) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML tree.

    A value that is exactly one reference is re-read as YAML, so ``${TTL:-60}`` is an integer.
    """
    env = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: expand_env(v, f"{path}.{k}" if path else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, f"{path}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    expanded = substitute_env(value, env, path)
    if _ENV_REF.fullmatch(value):
        parsed = yaml.safe_load(expanded) if expanded.strip() else expanded
        if isinstance(parsed, str | int | float | bool):
            return parsed
    return expanded


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; :class:`ConfigError` naming the file, and line:column of a syntax error."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
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
