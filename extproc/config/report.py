"""What ``check-config`` prints: one line per effective setting and where it came from, secrets masked."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from extproc.config.checks import is_secret
from extproc.config.env import ENV_REF, read_yaml
from extproc.config.milvus import MilvusSettings, tls_files
from extproc.config.settings import ENV_OVERRIDES, CacheSettings, ServerSettings
from extproc.config.verification import VerificationSettings
from extproc.errors import ConfigError

_NOT_SETTINGS = {"server", "verification", "milvus_config", "source", "notes", "policies"}
"""Fields that are no setting of the file (sections listed key by key, provenance, advice)."""


def show(key: str, value: Any) -> str:
    """A value as YAML would spell it; a secret never, only whether it is set."""
    if is_secret(key):
        return "(set, not shown)" if value else '""'
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple | list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if value == "":
        return '""'
    return str(value)


def _source(key_path: str, raw: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """``env VAR`` (an override), ``file`` (``file, ${VAR}`` when it names a variable) or ``default``.

    For a secret only the variable names are shown: a ``${VAR:-default}`` default, or text
    around the reference, may be the secret itself.
    """
    for var, target in ENV_OVERRIDES.items():
        if target == key_path and env.get(var):
            return f"env {var}"
    node: Any = raw
    for part in key_path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return "default"
        node = node[part]
    if isinstance(node, str) and "${" in node:
        if is_secret(key_path):
            names = ", ".join(f"${{{m.group(1)}}}" for m in ENV_REF.finditer(node))
            return f"file, {names}" if names else "file"
        return f"file, {node.strip()}"
    return "file"


def settings_lines(settings: CacheSettings, env: Mapping[str, str] | None = None) -> list[str]:
    """``key: value  (source)`` for every setting of the config file, then how Milvus is reached."""
    env = os.environ if env is None else env
    raw: Any = {}
    if not settings.source.startswith("<"):
        raw = (read_yaml(Path(settings.source)) or {}).get("semantic_cache") or {}
    rows: list[tuple[str, str, str]] = []
    for f in fields(CacheSettings):
        if f.name not in _NOT_SETTINGS:
            rows.append((f.name, show(f.name, getattr(settings, f.name)), _source(f.name, raw, env)))
    for f in fields(ServerSettings):
        key = f"server.{f.name}"
        rows.append((key, show(key, getattr(settings.server, f.name)), _source(key, raw, env)))
    for f in fields(VerificationSettings):
        key = f"verification.{f.name}"
        rows.append((key, show(key, getattr(settings.verification, f.name)), _source(key, raw, env)))
    width = max(len(k) + len(v) for k, v, _ in rows) + 4
    lines = [f"{k}: {v}".ljust(width) + f"({src})" for k, v, src in rows]
    lines.append(f"policies: {len(settings.policies)}".ljust(width) + f"({_source('policies', raw, env)})")
    for policy in settings.policies:  # in match order: the first that matches applies
        described = policy.describe()
        match = ", ".join(f"{k} {v}" for k, v in described["match"].items())
        changes = ", ".join(f"{k} {show(k, v)}" for k, v in described["settings"].items())
        lines.append(f"  {policy.name}: {match} -> {changes}")
    if settings.milvus_config is not None:
        lines.append(f"milvus ({settings.backend_config_path}):")
        lines += ["  " + line for line in milvus_lines(settings.milvus_config)]
    return lines


def milvus_lines(m: MilvusSettings) -> list[str]:
    """How a Milvus client file connects: address, auth (password never shown), TLS, collection."""
    lines = [f"address: {m.address}" + (" (Milvus Lite, a local file)" if m.is_lite else "")]
    if m.database:
        lines.append(f"database: {m.database}")
    auth = f"user {m.username!r}, password {show('password', m.password)}" if m.auth_enabled else "off"
    lines.append(f"auth: {auth}")
    try:
        tls = tls_files(m).describe() if m.tls_enabled else "off"
    except ConfigError as exc:
        raise ConfigError(f"{m.address}: {exc}") from exc
    lines.append(f"tls: {tls}")
    index = f"{m.index_type}/{m.metric_type}"
    lines.append(f"collection: {m.collection} ({m.vector_field}, dim {m.dimension}, {index})")
    lines.append(f"search: topk {m.topk}, {m.consistency_level}, timeout {m.search_timeout_ms} ms")
    lines.append(f"auto_create_collection: {show('', m.auto_create_collection)}")
    return lines
