"""The policies list: checks with precise errors, first match wins, settings applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.config.policies import find_policy, route_policies, with_policy
from extproc.config.settings import CacheSettings, parse_config
from extproc.dataplane.policy import request_settings, route_name, route_settings
from extproc.errors import ConfigError
from tests.conftest import milvus_yaml


def settings(*policies: dict[str, object], **top: object) -> CacheSettings:
    """Settings with these policies."""
    return parse_config({"semantic_cache": {"policies": list(policies), **top}})


def test_first_match_wins_and_the_rest_comes_from_the_defaults() -> None:
    s = settings(
        {"name": "code", "match": {"model": "codellama-*"}, "ttl_seconds": 86400},
        {"match": {"model": "code*"}, "ttl_seconds": 5, "similarity_threshold": 0.95},
        {"name": "cls", "match": {"route": "classify", "model": "bert-*"}, "enabled": False},
    )
    code, named_by_index, both = s.policies
    assert named_by_index.name == "policy1"
    assert find_policy(s.policies, "chat", "codellama-7b") is code
    assert find_policy(s.policies, "chat", "coder") is named_by_index
    assert find_policy(s.policies, "chat", "bert-base") is None  # the route does not match
    assert find_policy(s.policies, "classify", "bert-base") is both
    applied, name = request_settings(s, "chat", "codellama-7b")
    assert name == "code" and applied.ttl_seconds == 86400
    assert applied.similarity_threshold == s.similarity_threshold  # not changed: the default
    assert request_settings(s, "chat", "gpt-4o") == (s, "")
    assert with_policy(s, code) is with_policy(s, code)  # built once per (settings, policy)


def test_route_phase_knows_no_model() -> None:
    s = settings(
        {"name": "vip", "match": {"route": "internal", "model": "vip-*"}, "enabled": True},
        {"name": "off", "match": {"route": "internal"}, "enabled": False},
        {"name": "later", "match": {"model": "vip-*"}, "ttl_seconds": 5},
        enabled=True,
    )
    vip, off, later = s.policies
    assert route_policies(s.policies, "internal") == (vip, off)  # a vip-* model may turn it on
    assert route_policies(s.policies, "chat") == (later, None)  # the defaults for other models
    (on, vip_name), (disabled, off_name) = route_settings(s, "internal")
    assert on.enabled and not disabled.enabled and (vip_name, off_name) == ("vip", "off")
    assert route_settings(s, "chat")[-1] == (s, "")


def test_default_names_never_clash_with_written_ones() -> None:
    s = settings(
        {"name": "policy1", "match": {"model": "a"}, "ttl_seconds": 5},
        {"match": {"model": "b"}, "ttl_seconds": 5},
    )
    assert [p.name for p in s.policies] == ["policy1", "policy1.2"]


def test_route_name_from_grpc_metadata() -> None:
    assert route_name([("user-agent", "grpc"), ("X-Semantic-Cache-Route", " classify ")]) == "classify"
    assert route_name(None) == "" and route_name([("x-semantic-cache-route", b"bin")]) == ""


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        ("code", "semantic_cache.policies: must be a list"),
        (["x"], "semantic_cache.policies[0]: must be a mapping"),
        ([{"ttl_seconds": 5}], "semantic_cache.policies[0].match: required"),
        (
            [{"match": {"modle": "a"}, "ttl_seconds": 5}],
            "semantic_cache.policies[0].match.modle: unknown matcher",
        ),
        (
            [{"match": {"model": ""}, "ttl_seconds": 5}],
            "semantic_cache.policies[0].match.model: must be a non-empty",
        ),
        (  # Milvus keeps expiry as int64 milliseconds: every store would be refused
            [{"match": {"model": "a"}, "ttl_seconds": 10**16}],
            "semantic_cache.policies[0].ttl_seconds: must be an integer >= 0 and <= 10000000000",
        ),
        (  # `match: {model: }`: left empty, YAML reads null; it would match every model
            [{"match": {"model": None}, "scope_mode": "global"}],
            "semantic_cache.policies[0].match.model: must be a non-empty string, got None",
        ),
        (
            [{"match": {"route": "a b"}, "ttl_seconds": 5}],
            "semantic_cache.policies[0].match.route: must be 1-64",
        ),
        ([{"match": {"model": "a"}}], "semantic_cache.policies[0]: changes no setting"),
        ([{"match": {"model": "a"}, "top_k": 5}], "semantic_cache.policies[0].top_k: unknown key"),
        (
            [{"match": {"model": "a"}, "similarity_threshold": 2}],
            "semantic_cache.policies[0].similarity_threshold: must be a number between 0 and 1",
        ),
        (
            [
                {"name": "a", "match": {"model": "a"}, "enabled": False},
                {"name": "a", "match": {"model": "b"}, "enabled": False},
            ],
            "semantic_cache.policies[1].name: 'a' is already the name",
        ),
        (
            [{"match": {"model": "a"}, "scope_mode": "tenant"}],
            "semantic_cache.policies[0].scope_mode: must be one of",
        ),
    ],
)
def test_errors_name_the_policy_and_key(policies: object, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"semantic_cache": {"policies": policies}})
    assert expected in str(info.value)


def test_settings_holding_mappings_take_policies(tmp_path: Path) -> None:
    """The Milvus section holds mappings (unhashable): policies are applied by identity."""
    config = milvus_yaml(tmp_path / "milvus.yaml", "http://127.0.0.1:1", "policy_test")
    s = settings(
        {"match": {"model": "code-*"}, "ttl_seconds": 5},
        backend_type="milvus",
        backend_config_path=str(config),
    )
    applied, name = request_settings(s, "chat", "code-1")
    assert applied.ttl_seconds == 5 and applied.milvus_config == s.milvus_config and name == "policy0"
    assert request_settings(s, "chat", "code-2")[0] is applied  # built once


def test_a_policy_sets_its_own_false_hit_bound() -> None:
    """δ per kind of traffic: a code model held to 1 %, chat to the section's 5 %, one model off."""
    s = settings(
        {"name": "code", "match": {"model": "code*"}, "max_false_hit_rate": 0.01},
        {"name": "free", "match": {"model": "draft-*"}, "max_false_hit_rate": 0},
        verification={"max_false_hit_rate": 0.05},
    )
    code, _ = request_settings(s, "chat", "codellama")
    free, _ = request_settings(s, "chat", "draft-1")
    chat, _ = request_settings(s, "chat", "gpt-4o")
    assert code.verification.max_false_hit_rate == 0.01
    assert free.verification.max_false_hit_rate == 0
    assert chat.verification.max_false_hit_rate == 0.05
    assert code.verification.prior_strength == s.verification.prior_strength  # the rest unchanged
    with pytest.raises(ConfigError, match=r"policies\[0\].max_false_hit_rate: must be 0 \(off\) or a rate"):
        settings({"match": {"model": "x"}, "max_false_hit_rate": 0.7})
