"""``${VAR}`` values: never parsed as YAML, typed only where the setting is, shell-like defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.config.env import EnvText, expand_env, substitute_env
from extproc.config.milvus import load_milvus_config
from extproc.config.settings import parse_config
from extproc.errors import ConfigError

# Passwords YAML would have read as a tag, alias, comment, quoted string, mapping, number…
AWKWARD = [
    "!S3cretPw",
    "*S3cret",
    "@S3cret",
    "%S3cret",
    "'S3cret",
    "{S3cret",
    "[x]",
    "Pa55 #word",
    '"Pa55word"',
    "  Pa55word  ",
    "Pa55word: x",
    "- Pa55word",
    "12345678",
    "0x1F",
    "1e3",
    ".inf",
    "true",
    "null",
    "~",
]


@pytest.mark.parametrize("password", AWKWARD)
def test_a_milvus_password_arrives_byte_for_byte(tmp_path: Path, password: str) -> None:
    path = tmp_path / "milvus.yaml"
    path.write_text(
        "connection:\n  auth:\n    enabled: true\n"
        '    username: "${MILVUS_USERNAME}"\n    password: "${MILVUS_PASSWORD}"\n'
    )
    settings = load_milvus_config(path, {"MILVUS_USERNAME": "root", "MILVUS_PASSWORD": password})
    assert settings.password == password and type(settings.password) is str


@pytest.mark.parametrize("value", ["20240601", "1.10", "on", "0x1F", "!rev", "a #b"])
def test_string_settings_take_the_exact_text(value: str) -> None:
    raw = {"semantic_cache": {"revision": "${REV}", "verification": {"entry_secret": "${S}"}}}
    settings = parse_config(raw, env={"REV": value, "S": value})
    assert settings.revision == value and settings.verification.entry_secret == value


def test_typed_settings_convert_strictly() -> None:
    raw = {
        "semantic_cache": {
            "ttl_seconds": "${TTL:-60}",
            "min_confidence": "${C}",
            "guard_numbers": "${G}",
            "server": {"shutdown_grace_seconds": "${GRACE}"},
            "verification": {"max_concurrency": "${MC}", "replace": "${R}"},
            "policies": [{"match": {"route": "r"}, "ttl_seconds": "${PTTL}", "enabled": "${PE}"}],
        }
    }
    env = {"C": "0.9", "G": "Off", "GRACE": " 5 ", "MC": "8", "R": "YES", "PTTL": "30", "PE": "no"}
    settings = parse_config(raw, env=env)
    assert settings.ttl_seconds == 60 and settings.min_confidence == 0.9
    assert settings.guard_numbers is False and settings.server.shutdown_grace_seconds == 5
    assert settings.verification.max_concurrency == 8 and settings.verification.replace is True
    assert dict(settings.policies[0].overrides) == {"ttl_seconds": 30, "enabled": False}


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        (
            "ttl_seconds",
            "abc",
            "semantic_cache.ttl_seconds: must be an integer (seconds, 0 = never expire), "
            "got 'abc' (from ${X})",
        ),
        ("ttl_seconds", "1.5", "got '1.5' (from ${X})"),
        ("enabled", "1", "semantic_cache.enabled: must be true or false, got '1' (from ${X})"),
        ("min_confidence", "nan", "got 'nan' (from ${X})"),
    ],
)
def test_a_value_that_does_not_convert_is_one_clear_error(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"semantic_cache": {key: "${X}"}}, env={"X": value})
    assert expected in str(info.value)
    assert str(info.value).count(f"semantic_cache.{key}:") == 1


def test_milvus_typed_keys_and_params_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "milvus.yaml"
    path.write_text(
        'connection:\n  port: "${PORT:-19531}"\n  auth:\n    enabled: "${AUTH}"\n'
        '    username: "${U}"\n    password: "${P}"\n'
        'collection:\n  index:\n    params: {M: "${M}", efConstruction: 64}\n'
    )
    settings = load_milvus_config(path, {"AUTH": "true", "U": "root", "P": "007", "M": "32"})
    assert settings.port == 19531 and settings.auth_enabled is True and settings.password == "007"
    assert settings.index_params == {"M": 32, "efConstruction": 64}


def test_expand_env_keeps_the_reference_for_messages() -> None:
    value = expand_env("${TTL:-60}", "x", {})
    assert isinstance(value, EnvText) and value == "60" and value.ref == "${TTL}"
    assert type(expand_env("a-${X}", "x", {"X": "1"})) is str


def test_an_empty_variable_takes_the_default_as_in_a_shell() -> None:
    assert substitute_env("${X:-d}", {"X": ""}, "w") == "d"
    assert substitute_env("${X:-d}", {}, "w") == "d"
    assert substitute_env("${X:-d}", {"X": "v"}, "w") == "v"
    assert substitute_env("${X}", {"X": ""}, "w") == ""
    with pytest.raises(ConfigError, match="X is not set"):
        substitute_env("${X}", {}, "w")
    raw = {"semantic_cache": {"ttl_seconds": "${TTL:-60}", "scope_mode": "${MODE:-header}"}}
    settings = parse_config(raw, env={"TTL": "", "MODE": ""})
    assert settings.ttl_seconds == 60 and settings.scope_mode == "header"


@pytest.mark.parametrize("server", ["127.0.0.1:50051", [1], 5])
def test_a_non_mapping_server_with_an_address_override_is_a_config_error(server: object) -> None:
    with pytest.raises(ConfigError, match=r"semantic_cache\.server: must be a mapping"):
        parse_config(
            {"semantic_cache": {"server": server}}, env={"SEMANTIC_CACHE_GRPC_ADDRESS": "127.0.0.1:5"}
        )


def test_an_empty_server_section_still_takes_the_override() -> None:
    settings = parse_config(
        {"semantic_cache": {"server": None}}, env={"SEMANTIC_CACHE_GRPC_ADDRESS": "127.0.0.1:5"}
    )
    assert settings.server.grpc_address == "127.0.0.1:5"
