"""The Milvus client config file (``config/semantic-cache/milvus.yaml``): schema and validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from extproc.config.checks import KeySpec, check_section, int_range, one_of, positive
from extproc.config.env import EnvText, coerce_section, env_typed, expand_env, read_yaml
from extproc.errors import ConfigError

# Where the Helm chart mounts the `milvus-tls` Secret; looked at when tls.enabled has no file keys.
DEFAULT_TLS_DIR = "/etc/semantic-cache/milvus-tls"
DEFAULT_TLS_FILES = {"ca_file": "ca.crt", "cert_file": "client.crt", "key_file": "client.key"}


@dataclass(frozen=True)
class MilvusSettings:
    """Everything the Milvus backend needs, with defaults filled in."""

    host: str = "localhost"
    port: int = 19530
    uri: str | None = field(default=None, repr=False)  # may hold user:password (see address)
    """``http(s)://host:port`` for a server, or a local file path for embedded Milvus Lite."""
    database: str | None = None
    timeout: float = 60.0
    auth_enabled: bool = False
    username: str = ""
    password: str = field(default="", repr=False)
    """Never in a repr: settings are printed and logged."""
    tls_enabled: bool = False
    ca_file: str | None = None
    """None: ``DEFAULT_TLS_DIR/ca.crt`` if it exists, else the system trust store."""
    cert_file: str | None = None
    """None: ``DEFAULT_TLS_DIR/client.crt`` if it exists (mutual TLS needs it and the key)."""
    key_file: str | None = None
    """None: ``DEFAULT_TLS_DIR/client.key`` if it exists."""
    server_name: str | None = None
    collection: str = "semantic_cache"
    description: str = "Semantic cache"
    vector_field: str = "embedding"
    dimension: int = 384
    metric_type: str = "IP"
    index_type: str = "HNSW"
    index_params: dict[str, Any] = field(default_factory=lambda: {"M": 16, "efConstruction": 64})
    search_params: dict[str, Any] = field(default_factory=lambda: {"ef": 64})
    topk: int = 10
    consistency_level: str = "Session"
    search_timeout_ms: int = 1000
    auto_create_collection: bool = True
    verbose_errors: bool = True
    sweep_interval_seconds: float = 30.0

    @property
    def is_lite(self) -> bool:
        """True when ``uri`` is a local file (embedded Milvus Lite)."""
        return bool(self.uri) and "://" not in str(self.uri)

    @property
    def address(self) -> str:
        """What logs, /readyz and errors call the server: the URI (any user:password in it
        masked: pymilvus reads credentials from it), or HOST:PORT."""
        if not self.uri:
            return f"{self.host}:{self.port}"
        uri = str(self.uri)
        parts = urlsplit(uri) if "://" in uri else None
        if parts is None or "@" not in parts.netloc:
            return uri
        return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))

    def search_request(self, limit: int) -> dict[str, Any]:
        """``search_params`` for a search of ``limit`` results: HNSW refuses an ``ef`` below the
        limit ("ef(64) should be larger than k(100)"), so ``ef`` is raised to it."""
        params = dict(self.search_params)
        ef = params.get("ef")
        if isinstance(ef, int) and not isinstance(ef, bool) and ef < limit:
            params["ef"] = limit
        return {"metric_type": self.metric_type, "params": params}

    def client_uri(self) -> str:
        """The URI handed to pymilvus."""
        if self.uri:
            return str(self.uri)
        return f"{'https' if self.tls_enabled else 'http'}://{self.host}:{self.port}"


_PARAM_TYPES = (int, float, str, bool)
_metric = one_of("IP", "COSINE", "L2")
_consistency = one_of("Strong", "Session", "Bounded", "Eventually")
_index = one_of("HNSW", "IVF_FLAT", "FLAT", "AUTOINDEX")

_SECTIONS: dict[str, KeySpec] = {
    "connection": {
        "host": (str, "a host name", None),
        "port": (int, "a port number", int_range(1, 65535)),
        "uri": (str, "http(s)://host:port or a local file path", None),
        "database": (str, "a database name", None),
        "timeout": ((int, float), "seconds", positive),
        "auth": (dict, "a mapping", None),
        "tls": (dict, "a mapping", None),
    },
    "connection.auth": {
        "enabled": (bool, "true or false", None),
        "username": (str, 'a string, e.g. "${MILVUS_USERNAME}"', None),
        "password": (str, 'a string, e.g. "${MILVUS_PASSWORD}"', None),
    },
    "connection.tls": {
        "enabled": (bool, "true or false", None),
        "ca_file": (str, "a file path", None),
        "cert_file": (str, "a file path", None),
        "key_file": (str, "a file path", None),
        "server_name": (str, "a host name", None),
    },
    "collection": {
        "name": (str, "a collection name", None),
        "description": (str, "a string", None),
        "vector_field": (dict, "a mapping", None),
        "index": (dict, "a mapping", None),
    },
    "collection.vector_field": {
        "name": (str, "a field name", None),
        "dimension": (int, "an integer", int_range(1, 32768)),
        "metric_type": (str, "a string", _metric),
    },
    "collection.index": {"type": (str, "a string", _index), "params": (dict, "a mapping", None)},
    "search": {
        "params": (dict, "a mapping", None),
        "topk": (int, "an integer", int_range(1, 1000)),
        "consistency_level": (str, "a string", _consistency),
        "timeout_ms": (int, "milliseconds", int_range(1)),
    },
    "development": {
        "auto_create_collection": (bool, "true or false", None),
        "verbose_errors": (bool, "true or false", None),
    },
    "maintenance": {"sweep_interval_seconds": ((int, float), "seconds", positive)},
}
_TOP: KeySpec = {name: (dict, "a mapping", None) for name in _SECTIONS if "." not in name}


def looks_like_milvus_config(raw: Any) -> bool:
    """True for a parsed milvus.yaml: a mapping of only its sections (no ``semantic_cache:``)."""
    return isinstance(raw, dict) and bool(raw) and set(raw) <= set(_TOP)


def _expand(raw: dict[str, Any], source: str, env: Mapping[str, str] | None) -> dict[str, Any]:
    """``${VAR}`` expansion; the credentials only when auth is on, with an error that says so."""
    conn = raw.get("connection")
    auth = conn.get("auth") if isinstance(conn, dict) else None
    if not isinstance(auth, dict):
        return expand_env(raw, "", env)
    creds = {k: auth[k] for k in ("username", "password") if k in auth}
    rest = {k: v for k, v in auth.items() if k not in creds}
    out = expand_env({**raw, "connection": {**conn, "auth": rest}}, "", env)
    # With auth off the credentials are never used: an unset ${MILVUS_PASSWORD} is no error.
    if _flag(out["connection"]["auth"].get("enabled")):
        for key, value in creds.items():
            try:
                creds[key] = expand_env(value, f"connection.auth.{key}", env)
            except ConfigError as exc:
                raise ConfigError(
                    f"{source}: {exc}. connection.auth.enabled is true, so the Milvus {key} must come "
                    "from the environment: in Kubernetes from Secret milvus-auth (the chart maps it "
                    "to MILVUS_USERNAME / MILVUS_PASSWORD), elsewhere export the variable"
                ) from exc
    out["connection"]["auth"].update(creds)
    return out


def _flag(value: Any) -> bool:
    """True for ``true``, or a ``${VAR}`` that spells true."""
    if isinstance(value, EnvText):
        try:
            return env_typed(value, bool) is True
        except ValueError:
            return False  # reported by the section check
    return value is True


def _param(value: Any) -> Any:
    """An index or search parameter: a ``${VAR}`` that spells a number is that number."""
    if not isinstance(value, EnvText):
        return value
    try:
        return env_typed(value, (int, float))
    except ValueError:
        return str(value)


def _params(value: dict[str, Any], path: str, errors: list[str]) -> dict[str, Any]:
    bad = [k for k, v in value.items() if not isinstance(v, _PARAM_TYPES)]
    for key in bad:
        errors.append(f"{path}.{key}: must be a number or a string")
    return {k: _param(v) for k, v in value.items() if k not in bad}


def parse_milvus_config(raw: Any, source: str, env: Mapping[str, str] | None = None) -> MilvusSettings:
    """Validate a parsed milvus.yaml; raise :class:`ConfigError` naming every bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping (connection:, collection:, search:)")
    raw = _expand(raw, source, env)
    errors: list[str] = []
    for key, value in raw.items():
        if key not in _TOP:
            errors.append(f"{source}: {key}: unknown section. Use one of: {', '.join(sorted(_TOP))}")
        elif not isinstance(value, dict):
            errors.append(f"{source}: {key}: must be a mapping, got {type(value).__name__}")
    sections: dict[str, dict[str, Any]] = {}
    for name, spec in _SECTIONS.items():
        outer, _, inner = name.partition(".")
        value = raw.get(outer) if not inner else (raw.get(outer) or {}).get(inner)
        if value is None or not isinstance(value, dict):
            continue
        value = coerce_section(value, spec, f"{source}: {name}", errors)
        sections[name] = check_section(value, spec, f"{source}: {name}", errors)
    get = lambda section, key, default: sections.get(section, {}).get(key, default)  # noqa: E731
    tls = sections.get("connection.tls", {})
    auth = sections.get("connection.auth", {})
    defaults = MilvusSettings()
    index_params = _params(
        get("collection.index", "params", defaults.index_params), "collection.index.params", errors
    )
    search_params = _params(get("search", "params", defaults.search_params), "search.params", errors)
    settings = MilvusSettings(
        host=get("connection", "host", defaults.host),
        port=get("connection", "port", defaults.port),
        uri=get("connection", "uri", None),
        database=get("connection", "database", None),
        timeout=float(get("connection", "timeout", defaults.timeout)),
        auth_enabled=auth.get("enabled", False),
        username=auth.get("username", ""),
        password=auth.get("password", ""),
        tls_enabled=tls.get("enabled", False),
        ca_file=tls.get("ca_file"),
        cert_file=tls.get("cert_file"),
        key_file=tls.get("key_file"),
        server_name=tls.get("server_name"),
        collection=get("collection", "name", defaults.collection),
        description=get("collection", "description", defaults.description),
        vector_field=get("collection.vector_field", "name", defaults.vector_field),
        dimension=get("collection.vector_field", "dimension", defaults.dimension),
        metric_type=get("collection.vector_field", "metric_type", defaults.metric_type),
        index_type=get("collection.index", "type", defaults.index_type),
        index_params=index_params,
        search_params=search_params,
        topk=get("search", "topk", defaults.topk),
        consistency_level=get("search", "consistency_level", defaults.consistency_level),
        search_timeout_ms=get("search", "timeout_ms", defaults.search_timeout_ms),
        auto_create_collection=get("development", "auto_create_collection", True),
        verbose_errors=get("development", "verbose_errors", True),
        sweep_interval_seconds=float(
            get("maintenance", "sweep_interval_seconds", defaults.sweep_interval_seconds)
        ),
    )
    if settings.auth_enabled and not (settings.username and settings.password):
        errors.append(
            f"{source}: connection.auth: enabled needs username and password "
            '(e.g. "${MILVUS_USERNAME}" / "${MILVUS_PASSWORD}" from the milvus-auth Secret)'
        )
    if settings.is_lite and (settings.auth_enabled or settings.tls_enabled):
        errors.append(
            f"{source}: connection.uri {settings.uri!r} is a local Milvus Lite file: "
            "auth and tls do not apply; disable them or use an http(s):// URI"
        )
    if errors:
        raise ConfigError("invalid Milvus configuration:\n  " + "\n  ".join(errors))
    return settings


@dataclass(frozen=True)
class TlsFiles:
    """The files a TLS connection uses: a CA (None: the system trust store), a client pair or none."""

    ca: str | None
    cert: str | None = None
    key: str | None = None

    @property
    def mutual(self) -> bool:
        """True when the client presents a certificate (mutual TLS)."""
        return self.cert is not None

    def describe(self) -> str:
        """One line for logs and check-config."""
        trust = f"CA {self.ca}" if self.ca else "the system trust store"
        if self.mutual:
            return f"mutual TLS ({trust}, client certificate {self.cert}, key {self.key})"
        return f"one-way TLS ({trust}, no client certificate)"


def tls_files(s: MilvusSettings, tls_dir: str | None = None) -> TlsFiles:
    """Which TLS files exist and apply; :class:`ConfigError` for a set file that is missing or a half pair.

    A key left unset falls back to the chart's Secret mount (``tls_dir``) when that file exists:
    a Secret with only ``ca.crt`` gives one-way TLS, one with all three mutual TLS.
    """
    tls_dir = tls_dir or DEFAULT_TLS_DIR
    found: dict[str, str | None] = {}
    for key, default_name in DEFAULT_TLS_FILES.items():
        value = getattr(s, key)
        if value is not None:
            if not Path(value).is_file():
                raise ConfigError(f"connection.tls.{key}: {value} does not exist (or is not a file)")
            found[key] = value
        else:
            default = Path(tls_dir) / default_name
            found[key] = str(default) if default.is_file() else None
    cert, key = found["cert_file"], found["key_file"]
    if (cert is None) != (key is None):
        have, missing = ("certificate", "key") if cert else ("key", "certificate")
        where = cert or key
        wanted = (s.key_file or f"{tls_dir}/client.key") if cert else (s.cert_file or f"{tls_dir}/client.crt")
        raise ConfigError(
            f"connection.tls: a client {have} ({where}) but no client {missing} ({wanted} does not "
            "exist): mutual TLS needs both files, one-way TLS neither. Add the missing one (Secret "
            "milvus-tls: client.crt and client.key), or remove the other"
        )
    if cert is not None and found["ca_file"] is None:
        # pymilvus sends a client pair only together with a CA file.
        raise ConfigError(
            "connection.tls: mutual TLS (client certificate and key) needs the CA that signed the "
            "server's certificate: set connection.tls.ca_file or add ca.crt to the milvus-tls Secret"
        )
    return TlsFiles(found["ca_file"], cert, key)


def load_milvus_config(path: Path, env: Mapping[str, str] | None = None) -> MilvusSettings:
    """Read and validate a milvus.yaml file."""
    return parse_milvus_config(read_yaml(path), str(path), env)
