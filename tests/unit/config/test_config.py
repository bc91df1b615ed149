"""Configuration loading, env expansion and validation messages."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from extproc.config.settings import load_config, parse_config
from extproc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    """Write a config file."""
    path = tmp_path / name
    path.write_text(text)
    return path


def test_rollback_one_liner_is_valid(tmp_path: Path) -> None:
    settings = load_config(write(tmp_path, 'semantic_cache:\n  backend_type: "memory"\n'))
    assert settings.backend_type == "memory"
    assert settings.similarity_threshold == 0.8
    assert settings.max_entries == 10_000 and settings.ttl_seconds == 3600
    assert settings.eviction_policy == "lru"


def test_shipped_config_is_valid() -> None:
    settings = load_config(ROOT / "config" / "config.yaml")
    assert settings.enabled and settings.backend_type == "memory"


def test_other_router_sections_ignored_and_router_keys_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = (
        "bert_model:\n  model_id: x\n"
        "semantic_cache:\n  use_hnsw: true\n  hnsw_m: 16\n  embedding_model: bert\n"
    )
    settings = load_config(write(tmp_path, text))
    assert settings.embedding_model == "all-MiniLM-L6-v2"
    assert "use_hnsw" in caplog.text and "hnsw_m" in caplog.text


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "semantic_cache:\n  similarity_threshold: 1.5\n",
            "semantic_cache.similarity_threshold: must be a number between 0 and 1",
        ),
        (
            "semantic_cache:\n  similarity_threshold: high\n",
            "semantic_cache.similarity_threshold: must be a number",
        ),
        ("semantic_cache:\n  max_entries: -1\n", "semantic_cache.max_entries: must be an integer >= 1"),
        (
            "semantic_cache:\n  max_ttl_seconds: 31536000000\n",
            "semantic_cache.max_ttl_seconds: must be an integer >= 0 and <= 10000000000",
        ),
        ("semantic_cache:\n  max_entries: true\n", "semantic_cache.max_entries: must be an integer"),
        (
            "semantic_cache:\n  eviction_policy: random\n",
            'semantic_cache.eviction_policy: must be one of "fifo", "lru", "lfu"',
        ),
        (
            "semantic_cache:\n  backend_type: redis\n",
            'semantic_cache.backend_type: must be one of "memory", "milvus"',
        ),
        ("semantic_cache:\n  treshold: 0.8\n", "semantic_cache.treshold: unknown key"),
        (
            "semantic_cache:\n  server:\n    grpc_address: nowhere\n",
            'semantic_cache.server.grpc_address: must be "host:port"',
        ),
        ("semantic_cache:\n  scope_mode: tenant\n", "semantic_cache.scope_mode: must be one of"),
        ("semantic_cache:\n  backend_type: milvus\n  backend_config_path: ''\n", "is empty; remove it"),
        (
            "semantic_cache:\n  backend_config_path: nope/milvus.yaml\n",
            "semantic_cache.backend_config_path: 'nope/milvus.yaml' not found (looked in",
        ),
        (
            "semantic_cache:\n  ttl_seconds: ${UNSET_VAR_FOR_TEST}\n",
            "environment variable UNSET_VAR_FOR_TEST is not set",
        ),
        ("semantic_cache:\n  fingerprint_ignore_fields: [model]\n", "model and messages are always part"),
        (
            "semantic_cache:\n  max_ttl_seconds: -5\n",
            "semantic_cache.max_ttl_seconds: must be an integer >= 0 and <= 10000000000, got -5",
        ),
        (
            "semantic_cache:\n  volatile_ttl_seconds: 1.5\n",
            "semantic_cache.volatile_ttl_seconds: must be an integer (seconds, 0 = never cache them)",
        ),
        (
            "semantic_cache:\n  volatile_detection: maybe\n",
            "semantic_cache.volatile_detection: must be true or false",
        ),
        (  # Envoy refuses a longer stream timeout (max_message_timeout 65 s): followers would drop
            "semantic_cache:\n  coalesce_wait_ms: 120000\n",
            "semantic_cache.coalesce_wait_ms: must be an integer >= 0 and <= 64000, got 120000",
        ),
        ("other: 1\n", "no semantic_cache: section"),
        ("semantic_cache: [1]\n", "semantic_cache: must be a mapping"),
        ("semantic_cache:\n  a: [\n", "config.yaml:3:1: not valid YAML: while parsing a flow node"),
        ("semantic_cache:\n  min_confidence: 1.5\n", "semantic_cache.min_confidence: must be"),
        ("semantic_cache:\n  min_confidence: high\n", "semantic_cache.min_confidence: must be a number"),
        (
            "semantic_cache:\n  verifier_model: nope/verifier.json\n",
            "semantic_cache.verifier_model: 'nope/verifier.json' not found (looked in",
        ),
    ],
)
def test_errors_name_the_key_and_fix(tmp_path: Path, yaml_text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, yaml_text))
    assert expected in str(info.value)


def test_missing_file_error() -> None:
    with pytest.raises(ConfigError, match=r"not found\. Pass --config FILE"):
        load_config("/nonexistent/config.yaml")


def test_env_expansion_with_defaults_and_typing() -> None:
    raw = {
        "semantic_cache": {
            "ttl_seconds": "${TTL:-60}",
            "similarity_threshold": "${T}",
            "scope_header": "x-${H:-tenant}-id",
        }
    }
    settings = parse_config(raw, env={"T": "0.85"})
    assert settings.ttl_seconds == 60 and settings.similarity_threshold == 0.85
    assert settings.scope_header == "x-tenant-id"


def test_env_overrides_beat_the_file() -> None:
    raw = {"semantic_cache": {"scope_mode": "global", "server": {"grpc_address": "0.0.0.0:1"}}}
    env = {
        "SEMANTIC_CACHE_SCOPE_MODE": "header",
        "SEMANTIC_CACHE_SCOPE_HEADER": "x-org",
        "SEMANTIC_CACHE_GRPC_ADDRESS": "127.0.0.1:6000",
    }
    settings = parse_config(raw, env=env)
    assert settings.scope_mode == "header" and settings.scope_header == "x-org"
    assert settings.server.grpc_address == "127.0.0.1:6000"


def test_admin_allowed_hosts_and_origins_from_file_and_environment() -> None:
    server = {
        "admin_allowed_hosts": ["Semantic-Router-Admin.ns.svc.", "10.0.0.7", "[fd00::1]"],
        "admin_allowed_origins": ["https://Ops.example.com/", "http://127.0.0.1:3000"],
    }
    settings = parse_config({"semantic_cache": {"server": server}}, env={})
    assert settings.server.admin_allowed_hosts == ("semantic-router-admin.ns.svc", "10.0.0.7", "[fd00::1]")
    assert settings.server.admin_allowed_origins == ("https://ops.example.com", "http://127.0.0.1:3000")
    assert parse_config({"semantic_cache": {}}, env={}).server.admin_allowed_hosts == ()
    env = {
        "SEMANTIC_CACHE_ADMIN_ALLOWED_HOSTS": "a.ns.svc, a.ns.svc.cluster.local",
        "SEMANTIC_CACHE_ADMIN_ALLOWED_ORIGINS": "https://ops.example.com",
    }
    overridden = parse_config({"semantic_cache": {"server": server}}, env=env).server
    assert overridden.admin_allowed_hosts == ("a.ns.svc", "a.ns.svc.cluster.local")
    assert overridden.admin_allowed_origins == ("https://ops.example.com",)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("admin_allowed_hosts", "a.example", "admin_allowed_hosts: must be a list of host names"),
        ("admin_allowed_hosts", ["*.example.com"], "must be a host name or IP address"),
        ("admin_allowed_hosts", ["admin.example:9191"], "without scheme, port or wildcard"),
        ("admin_allowed_hosts", ["http://admin.example"], "got 'http://admin.example'"),
        ("admin_allowed_origins", ["ops.example.com"], 'must be an origin such as "https://ops.example.com"'),
        ("admin_allowed_origins", ["https://ops.example.com/path"], "got 'https://ops.example.com/path'"),
        ("admin_allowed_origins", [3], "got 3"),
    ],
)
def test_admin_allow_lists_are_checked(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"semantic_cache": {"server": {key: value}}}, env={})
    assert f"semantic_cache.server.{key}" in str(info.value) and message in str(info.value)


def test_backend_config_path_resolves_against_config_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "milvus.yaml").write_text("connection: {}\n")
    path = write(tmp_path, 'semantic_cache:\n  backend_config_path: "sub/milvus.yaml"\n')
    settings = load_config(path)
    assert settings.backend_config_file() == tmp_path / "sub" / "milvus.yaml"


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    from tests.conftest import python_exe

    good = subprocess.run(
        [python_exe(), "-m", "extproc.cli", "check-config", str(ROOT / "config" / "config.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.returncode == 0 and "OK" in good.stdout
    bad = subprocess.run(
        [
            python_exe(),
            "-m",
            "extproc.cli",
            "check-config",
            str(write(tmp_path, "semantic_cache:\n  top_k: 0\n")),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "semantic_cache.top_k: must be an integer >= 1" in bad.stderr


def test_check_config_explains_the_old_threshold_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from extproc.cli.main import main

    old = write(tmp_path, "semantic_cache:\n  similarity_threshold: 0.9\n")
    assert main(["--log-level", "error", "check-config", str(old)]) == 0
    out = capsys.readouterr().out
    assert "note: similarity_threshold (0.9) is now only the candidate prefilter" in out
    assert "min_confidence" in out and "  similarity_threshold: 0.9" in out  # still accepted
    new = write(tmp_path, "semantic_cache:\n  similarity_threshold: 0.8\n  min_confidence: 0.9\n")
    assert main(["--log-level", "error", "check-config", str(new)]) == 0
    assert "note:" not in capsys.readouterr().out


def test_check_config_takes_the_file_as_every_command_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its own error says "Pass --config FILE", which it refused (unrecognized arguments)."""
    from extproc.cli.main import main

    config = write(tmp_path, "semantic_cache:\n  similarity_threshold: 0.85\n")
    assert main(["--log-level", "error", "check-config", "--config", str(config)]) == 0
    assert f"{config}: OK" in capsys.readouterr().out
    other = tmp_path / "other.yaml"
    assert main(["--log-level", "error", "check-config", str(other), "--config", str(config)]) == 2
    assert "two config files given" in capsys.readouterr().err


def test_the_shipped_config_file_names_every_key() -> None:
    """config/config.yaml is the reference users copy: every setting is there with its default
    (policies, the Milvus file and the entry secret have sections or files of their own)."""
    from extproc.config.settings import _CACHE_KEYS, _SERVER_KEYS
    from extproc.config.verification import VERIFICATION_KEYS

    text = (ROOT / "config" / "config.yaml").read_text()
    named = set(re.findall(r"^\s*#?\s*([a-z_]+):", text, re.M))
    wanted = (set(_CACHE_KEYS) | set(_SERVER_KEYS) | set(VERIFICATION_KEYS)) - {"policies"}
    assert wanted <= named, sorted(wanted - named)


@pytest.mark.parametrize(
    ("settings", "identity"),
    [
        ({}, "all-MiniLM-L6-v2"),
        ({"embedding_model": "sentence-transformers/all-MiniLM-L6-v2"}, "all-MiniLM-L6-v2"),
        ({"embedding_model": "bert"}, "all-MiniLM-L6-v2"),
        ({"embedding_model": "/models/bge-small-en-v1.5/"}, "bge-small-en-v1.5"),
        (
            {
                "embedding_endpoint": "http://embed:8000/v1/embeddings",
                "embedding_endpoint_model": "BAAI/bge-small-en-v1.5",
            },
            "bge-small-en-v1.5",
        ),
    ],
)
def test_the_embedding_model_is_named_not_located(settings: dict[str, str], identity: str) -> None:
    """What a collection and an export record: moving a folder or renaming a host changes nothing."""
    assert parse_config({"semantic_cache": settings}).embedding_identity == identity


def test_check_config_refuses_a_verifier_model_the_start_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated or binary model file said OK here, then the pod crash-looped at start."""
    from extproc.cli.main import main

    (tmp_path / "cut.json").write_text('{"format": "semantic-cache-verifier", "version": 2, "weig')
    (tmp_path / "binary.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    for name, message in (("cut.json", "not JSON"), ("binary.json", "not UTF-8 text")):
        config = write(tmp_path, f"semantic_cache:\n  verifier_model: {name}\n")
        assert main(["--log-level", "error", "check-config", str(config)]) == 2, name
        assert message in capsys.readouterr().err, name
