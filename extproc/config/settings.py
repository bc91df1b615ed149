"""Configuration: YAML file + ``${ENV}`` expansion + validation with precise errors.

The file is compatible with vLLM Semantic Router: only the ``semantic_cache:`` section is read,
every other top-level section is ignored.  Deployment and security settings (listen addresses,
scope mode and header) may also come from environment variables, which override the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from extproc.config.checks import (
    KeySpec,
    address,
    check_section,
    header_name,
    host_names,
    import_spec,
    int_range,
    one_of,
    optional_header_name,
    optional_http_url,
    origins,
    positive,
    revision,
    seconds,
    unit_interval,
)
from extproc.config.env import ENV_OVERRIDES as ENV_OVERRIDES  # re-exported: callers import it here
from extproc.config.env import (
    apply_env_overrides,
    coerce_section,
    expand_env,
    read_yaml,
    resolve_relative,
)
from extproc.config.milvus import MilvusSettings, load_milvus_config
from extproc.config.policies import POLICY_KEYS, Policy, parse_policies
from extproc.config.verification import VERIFICATION_KEYS, VerificationSettings, parse_verification
from extproc.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "config/config.yaml"
DEFAULT_MILVUS_CONFIG_PATH = "config/semantic-cache/milvus.yaml"
"""Where the chart mounts milvus.yaml and the repository keeps it (relative to the working dir)."""
CONFIG_ENV = "SEMANTIC_CACHE_CONFIG"
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
MAX_COALESCE_WAIT_MS = 64_000
"""The longest single-flight wait: a waiting stream asks Envoy for its wait plus 1 s, and Envoy
ignores a request past its ``max_message_timeout`` (65 s in the shipped Envoy config)."""

# Semantic-router cache keys that have no meaning here: accepted, with a warning.
IGNORED_ROUTER_KEYS = frozenset({"use_hnsw", "hnsw_m", "hnsw_ef_construction", "max_memory_entries"})


def model_name(name: str) -> str:
    """An embedding model's name without where it is: the last part of a path or a hub id."""
    if name == "bert":  # the packaged default's old alias
        return DEFAULT_EMBEDDING_MODEL
    return name.rstrip("/").rsplit("/", 1)[-1] or name


@dataclass(frozen=True)
class ServerSettings:
    """Where and how the gRPC processor listens."""

    grpc_address: str = "127.0.0.1:50051"
    metrics_address: str = "127.0.0.1:9190"
    """Prometheus /metrics, /healthz, /readyz."""
    max_message_bytes: int = 64 * 1024 * 1024
    shutdown_grace_seconds: float = 30.0
    admin_address: str = "127.0.0.1:9191"
    """The admin API (extproc.admin); off loopback only with SEMANTIC_CACHE_ADMIN_TOKEN set."""
    admin_allowed_hosts: tuple[str, ...] = ()
    """Host names the admin API answers to besides loopback, IP addresses and its own address."""
    admin_allowed_origins: tuple[str, ...] = ()
    """Browser origins allowed to call the admin API (none: every request with an Origin is refused)."""


@dataclass(frozen=True)
class CacheSettings:
    """The ``semantic_cache:`` section, with every default filled in."""

    enabled: bool = True
    backend_type: str = "memory"
    backend_config_path: str = DEFAULT_MILVUS_CONFIG_PATH
    """The Milvus client file; read only when backend_type is milvus, or when set in the file."""
    similarity_threshold: float = 0.8
    """The candidate prefilter: below it a stored prompt is never considered (min_confidence decides)."""
    max_entries: int = 10_000
    ttl_seconds: int = 3600
    eviction_policy: str = "lru"
    # Freshness (docs/freshness.md).
    max_ttl_seconds: int = 86400
    """The longest TTL a request may ask for with x-semantic-cache-ttl (0 = the header is ignored)."""
    volatile_detection: bool = True
    """Time-sensitive prompts and dated answers are kept at most ``volatile_ttl_seconds``."""
    volatile_ttl_seconds: int = 0
    """How long such answers are served (0 = never stored nor served from cache)."""
    embedding_model: str = DEFAULT_EMBEDDING_MODEL
    top_k: int = 10
    scope_mode: str = "global"
    scope_header: str = "x-tenant-id"
    fingerprint_ignore_fields: tuple[str, ...] = ("stream", "stream_options", "request_id")
    max_response_bytes: int = 4 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024
    """The largest request body looked up, after decompression (Envoy's buffer limit by default)."""
    lookup_timeout_ms: int = 1500
    coalesce_wait_ms: int = 60_000
    """How long identical concurrent misses wait for the first one's answer (single-flight)."""
    embedding_batch_size: int = 64
    embedding_threads: int = 0
    embedding_workers: int = 0
    """Forward passes run at once (0 = one per usable core with ONNX Runtime, 1 with torch)."""
    max_added_latency_ms: int = 150
    """Budget for the wait for an embedding: past it the semantic lookup is skipped (overloaded)."""
    revision: str = ""
    """The model weights' revision: part of every partition, so an upgrade never serves old answers."""
    revision_header: str = ""
    """A request header (set by a trusted hop) that overrides ``revision`` per request; "" = none."""
    # Answer-correctness guards (see extproc/cache/guards/ and bench/quality.md).
    guard_numbers: bool = True
    guard_units: bool = True
    guard_negation: bool = True
    guard_opposites: bool = True
    guard_direction: bool = True
    guard_code: bool = True
    guard_instructions: bool = True
    guard_content: bool = False
    """Off by default: its evidence (names, swaps) is in the learned verifier's features."""
    guard_content_min_alignment: float = 0.5
    guard_content_name_alignment: float = 0.7
    """A name (Austria, Python) without an exact match needs a counterpart this close."""
    guard_content_swaps: bool = True
    guard_content_modifiers: bool = False
    verifier_model: str = "builtin"
    """The learned verifier's model file, ``builtin`` (shipped) or ``""`` (none: no confidence)."""
    min_confidence: float = 0.75
    """Serve a semantic hit only when the verifier gives it at least this P(same meaning)."""
    verifier: str = ""
    """``"package.module:function"`` building an extra guard (e.g. a cross-encoder); empty: none."""
    embedding_backend: str = "auto"
    """``auto`` (ONNX Runtime when usable, else torch) | ``onnx`` | ``torch``."""
    upstream_cache_control: bool = True
    """Honour the answer's ``cache-control``: ``no-store`` / ``private`` are not stored, ``s-maxage``
    / ``max-age`` cap how long an answer is kept."""
    reason_header: bool = True
    """Send ``x-semantic-cache-reason`` on bypasses and guarded misses (a reason, never prompt text)."""
    # A remote embedding model instead of the local one (docs/embeddings.md).
    embedding_endpoint: str = ""
    """An OpenAI-compatible /v1/embeddings URL; "" = the local ``embedding_model``."""
    embedding_endpoint_model: str = ""
    """The model name sent to the endpoint ("" = ``embedding_model``)."""
    embedding_timeout_ms: int = 1000
    embedding_retries: int = 2
    policies: tuple[Policy, ...] = ()
    """Per-route / per-model settings, first match wins (docs/policies.md)."""
    server: ServerSettings = field(default_factory=ServerSettings)
    verification: VerificationSettings = field(default_factory=VerificationSettings)
    """Shadow verification, the false-hit bound, entry ids (docs/verification.md)."""
    milvus_config: MilvusSettings | None = None
    """The validated milvus.yaml when backend_type is milvus (read once, at load)."""
    source: str = "<defaults>"
    """Path of the file this came from (for messages)."""
    notes: tuple[str, ...] = ()
    """Advice about the file (keys whose meaning changed), printed by check-config and logged."""

    @property
    def embedding_identity(self) -> str:
        """The embedding model as stored vectors record it: its name (a served model's, or a
        local folder's), never where it is reached, so moving it or renaming a host changes
        nothing ("BAAI/bge-small-en-v1.5" served and a local "bge-small-en-v1.5" are one)."""
        name = self.embedding_model
        if self.embedding_endpoint and self.embedding_endpoint_model:
            name = self.embedding_endpoint_model
        return model_name(name)

    def milvus(self) -> MilvusSettings:
        """The validated Milvus client settings from ``backend_config_path``."""
        if self.milvus_config is not None:
            return self.milvus_config

        path = self.backend_config_file()
        if path is None:
            raise ConfigError("semantic_cache.backend_config_path is required for the milvus backend")
        return load_milvus_config(path)

    def backend_config_file(self) -> Path | None:
        """Resolve ``backend_config_path`` (working directory first, then the config's folder)."""
        if not self.backend_config_path:
            return None
        return resolve_relative(self.backend_config_path, self.source, "backend_config_path")


# --- validation ---------------------------------------------------------------------------

_CACHE_KEYS: KeySpec = {
    "enabled": (bool, "true or false", None),
    "backend_type": (str, "a string", one_of("memory", "milvus")),
    "backend_config_path": (str, "a file path", None),
    "similarity_threshold": ((int, float), "a number", unit_interval),
    "max_entries": (int, "an integer", int_range(1)),
    "ttl_seconds": (int, "an integer (seconds, 0 = never expire)", seconds),
    "eviction_policy": (str, "a string", one_of("fifo", "lru", "lfu")),
    "max_ttl_seconds": (int, "an integer (seconds, 0 = ignore x-semantic-cache-ttl)", seconds),
    "volatile_detection": (bool, "true or false", None),
    "volatile_ttl_seconds": (int, "an integer (seconds, 0 = never cache them)", seconds),
    "embedding_model": (str, "a model name or a local path", None),
    "top_k": (int, "an integer", int_range(1, 1000)),
    "scope_mode": (str, "a string", one_of("global", "header", "authorization")),
    "scope_header": (str, "a header name", header_name),
    "fingerprint_ignore_fields": (list, "a list of request field names", None),
    "max_response_bytes": (int, "an integer (bytes)", int_range(1024)),
    "max_request_bytes": (int, "an integer (bytes)", int_range(1024)),
    "lookup_timeout_ms": (int, "an integer (milliseconds)", int_range(1)),
    "coalesce_wait_ms": (
        int,
        "an integer (milliseconds, 0 = never wait)",
        int_range(0, MAX_COALESCE_WAIT_MS),
    ),
    "embedding_batch_size": (int, "an integer", int_range(1, 4096)),
    "embedding_threads": (int, "an integer (0 = library default)", int_range(0, 256)),
    "embedding_workers": (int, "an integer (0 = one per usable core)", int_range(0, 64)),
    "max_added_latency_ms": (int, "an integer (milliseconds, 0 = never skip)", int_range(0, 600_000)),
    "revision": (str, 'a string (e.g. "2024-06-01" or a weights hash)', revision),
    "revision_header": (str, 'a header name, or "" for none', optional_header_name),
    "guard_numbers": (bool, "true or false", None),
    "guard_units": (bool, "true or false", None),
    "guard_negation": (bool, "true or false", None),
    "guard_opposites": (bool, "true or false", None),
    "guard_direction": (bool, "true or false", None),
    "guard_code": (bool, "true or false", None),
    "guard_instructions": (bool, "true or false", None),
    "guard_content": (bool, "true or false", None),
    "guard_content_min_alignment": ((int, float), "a number", unit_interval),
    "guard_content_name_alignment": ((int, float), "a number", unit_interval),
    "guard_content_swaps": (bool, "true or false", None),
    "guard_content_modifiers": (bool, "true or false", None),
    "verifier": (str, '"package.module:function" or ""', import_spec),
    "verifier_model": (str, '"builtin", a model file from semantic-cache train-verifier, or ""', None),
    "min_confidence": ((int, float), "a number (a probability)", unit_interval),
    "embedding_backend": (str, "a string", one_of("auto", "torch", "onnx")),
    "reason_header": (bool, "true or false", None),
    "upstream_cache_control": (bool, "true or false", None),
    "policies": (list, "a list of policies", None),
    "embedding_endpoint": (str, 'an http(s) URL or ""', optional_http_url),
    "embedding_endpoint_model": (str, "a model name", None),
    "embedding_timeout_ms": (int, "an integer (milliseconds)", int_range(1, 600_000)),
    "embedding_retries": (int, "an integer", int_range(0, 10)),
}
_SERVER_KEYS: KeySpec = {
    "grpc_address": (str, '"host:port"', address),
    "metrics_address": (str, '"host:port"', address),
    "max_message_bytes": (int, "an integer (bytes)", int_range(4 * 1024 * 1024, 2**31 - 1)),  # gRPC's int
    "shutdown_grace_seconds": ((int, float), "a number of seconds", positive),
    "admin_address": (str, '"host:port"', address),
    "admin_allowed_hosts": (list, "a list of host names", host_names),
    "admin_allowed_origins": (list, "a list of origins", origins),
}


# --- loading ------------------------------------------------------------------------------


def default_config_path(explicit: str | None = None) -> str:
    """``--config`` if given, else ``$SEMANTIC_CACHE_CONFIG``, else ``config/config.yaml``."""
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> CacheSettings:
    """Read, expand and validate a config file; raise :class:`ConfigError` on any problem."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(
            f"config file {file} not found. Pass --config FILE, set {CONFIG_ENV}, "
            f"or create {DEFAULT_CONFIG_PATH}"
        )
    return parse_config(read_yaml(file), source=str(file), env=env)


def parse_config(raw: Any, source: str = "<inline>", env: Mapping[str, str] | None = None) -> CacheSettings:
    """Validate an already-parsed YAML document (see :func:`load_config`)."""
    env = os.environ if env is None else env
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a semantic_cache: section")
    section = raw.get("semantic_cache")
    if section is None:
        raise ConfigError(
            f"{source}: no semantic_cache: section. Add one, e.g. semantic_cache: {{backend_type: memory}}"
        )
    if not isinstance(section, dict):
        raise ConfigError(f"semantic_cache: must be a mapping, got {type(section).__name__}")
    section = expand_env(section, "semantic_cache", env)
    section = apply_env_overrides(section, env)

    errors: list[str] = []
    for key in sorted(IGNORED_ROUTER_KEYS & section.keys()):
        log.warning("semantic_cache.%s is a semantic-router setting with no effect here; ignored", key)
    nested = ("server", "verification")
    cache_part = {k: v for k, v in section.items() if k not in IGNORED_ROUTER_KEYS and k not in nested}
    cache_part = coerce_section(cache_part, _CACHE_KEYS, "semantic_cache", errors)
    values = check_section(cache_part, _CACHE_KEYS, "semantic_cache", errors)
    server_raw = section.get("server", {}) or {}
    if not isinstance(server_raw, dict):
        errors.append(f"semantic_cache.server: must be a mapping, got {type(server_raw).__name__}")
        server_raw = {}
    server_raw = coerce_section(server_raw, _SERVER_KEYS, "semantic_cache.server", errors)
    server_values = check_section(server_raw, _SERVER_KEYS, "semantic_cache.server", errors)
    verification_raw = section.get("verification")
    if isinstance(verification_raw, dict):
        prefix = "semantic_cache.verification"
        verification_raw = coerce_section(verification_raw, VERIFICATION_KEYS, prefix, errors)
    verification = parse_verification(verification_raw, env, errors)
    for key in ("admin_allowed_hosts", "admin_allowed_origins"):
        if key in server_values:
            server_values[key] = tuple(str(x).lower().rstrip("./") for x in server_values[key])
    ignore = values.get("fingerprint_ignore_fields")
    if ignore is not None:
        if not all(isinstance(x, str) for x in ignore):
            errors.append("semantic_cache.fingerprint_ignore_fields: every item must be a string")
        elif {"model", "messages"} & set(ignore):
            errors.append(
                "semantic_cache.fingerprint_ignore_fields: model and messages are always part of "
                "the request identity; remove them"
            )
        values["fingerprint_ignore_fields"] = tuple(ignore)
    if "policies" in values:
        policies = [
            coerce_section(p, POLICY_KEYS, f"semantic_cache.policies[{i}]", errors)
            if isinstance(p, dict)
            else p
            for i, p in enumerate(values["policies"])
        ]
        values["policies"] = parse_policies(policies, errors)
    if values.get("embedding_model") == "bert":
        values["embedding_model"] = DEFAULT_EMBEDDING_MODEL
    if errors:
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(errors))
    notes = _notes(values)
    for note in notes:
        log.warning("%s: %s", source, note)
    server = ServerSettings(**server_values)
    settings = CacheSettings(**values, server=server, verification=verification, source=source, notes=notes)
    if settings.backend_type == "milvus" and not settings.backend_config_path:
        raise ConfigError(
            f"{source}: semantic_cache.backend_config_path is empty; remove it to use the default "
            f'"{DEFAULT_MILVUS_CONFIG_PATH}" or name the Milvus client file'
        )
    if "backend_config_path" in values and settings.backend_config_path:
        settings.backend_config_file()  # a path set in the file must exist, whatever the backend
    if settings.verifier_model not in ("", "builtin"):
        resolve_relative(settings.verifier_model, source, "verifier_model")  # the model is read at start
    if settings.backend_type == "milvus":
        if "eviction_policy" in values and settings.eviction_policy != "fifo":
            raise ConfigError(
                f'{source}: semantic_cache.eviction_policy "{settings.eviction_policy}" is not supported '
                'with backend_type "milvus" (entries are evicted oldest-first); remove it or set "fifo"'
            )

        path = _milvus_config_file(settings, "backend_config_path" in values)
        # Validated now, so a bad milvus.yaml stops the process at start.
        settings = replace(settings, eviction_policy="fifo", milvus_config=load_milvus_config(path, env))
    return settings


def _milvus_config_file(settings: CacheSettings, explicit: bool) -> Path:
    """The milvus.yaml to read; when the default is missing, say it is the default being used."""
    try:
        path = settings.backend_config_file()
    except ConfigError as exc:
        if explicit:
            raise
        # The runbook's rollback replaces config.yaml with backend_type alone, and switching
        # back sets backend_type: "milvus" alone: the default path is then what is looked up.
        raise ConfigError(
            f'{settings.source}: backend_type is "milvus" and backend_config_path is not set, so the '
            f"default {DEFAULT_MILVUS_CONFIG_PATH!r} is used, but {exc}. Mount or write the Milvus "
            "client file there, or set semantic_cache.backend_config_path"
        ) from exc
    assert path is not None
    return path


def _notes(values: Mapping[str, Any]) -> tuple[str, ...]:
    """What a file written for an older release should know (its keys are still accepted)."""
    if "similarity_threshold" not in values or "min_confidence" in values:
        return ()
    if values.get("verifier_model", "builtin") == "":
        return ()
    return (
        f"similarity_threshold ({values['similarity_threshold']}) is now only the candidate prefilter: "
        "a candidate below it is never considered, one above it is served when the verifier's "
        f"confidence reaches min_confidence (default {CacheSettings.min_confidence}: P(same meaning)). "
        "Set min_confidence to choose the precision you want (the table in docs/correctness.md), and "
        'keep similarity_threshold low (0.8) so it costs no recall; verifier_model: "" restores the '
        "old behaviour (a cosine threshold and the rule guards)",
    )


def with_overrides(settings: CacheSettings, **changes: Any) -> CacheSettings:
    """A copy of ``settings`` with some fields changed (tests and the eval tool use this)."""
    known = {f.name for f in fields(CacheSettings)}
    unknown = set(changes) - known
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
    return replace(settings, **changes)
