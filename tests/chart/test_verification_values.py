"""Verification in the chart: off by default, the upstream Envoy uses by default, the entry-id Secret."""

from __future__ import annotations

from pathlib import Path

import yaml

from extproc.config.settings import parse_config

from .helpers import check_config, render


def verification_of(chart: Path, values: dict | None = None) -> dict:
    """The rendered config.yaml's verification section, and its settings as the processor reads them."""
    config = yaml.safe_load(render(chart, values).data("semantic-router-config", "config.yaml"))
    return config["semantic_cache"]["verification"]


def test_off_by_default_and_aimed_at_the_upstream(chart: Path) -> None:
    section = verification_of(chart)
    assert section["sample_rate"] == 0 and section["max_false_hit_rate"] == 0
    assert section["upstream_url"] == "http://vllm:8000"  # upstream.url, where Envoy sends misses
    settings = parse_config({"semantic_cache": {"verification": section}}, env={}).verification
    assert not settings.active


def test_turned_on_with_its_own_upstream(chart: Path, tmp_path: Path) -> None:
    values = {
        "upstream": {"url": "https://llm.example.com:8443"},
        "cache": {"settings": {"verification": {"sample_rate": 0.02, "max_false_hit_rate": 0.02}}},
    }
    section = verification_of(chart, values)
    assert section["upstream_url"] == "https://llm.example.com:8443" and section["sample_rate"] == 0.02
    own = {"cache": {"settings": {"verification": {"sample_rate": 0.5, "upstream_url": "http://shadow:80"}}}}
    assert verification_of(chart, own)["upstream_url"] == "http://shadow:80"
    result = check_config(render(chart, values), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "verification.sample_rate: 0.02" in result.stdout


def test_the_entry_secret_comes_from_a_secret(chart: Path) -> None:
    assert "SEMANTIC_CACHE_ENTRY_SECRET" not in render(chart).env("processor")
    r = render(chart, {"admin": {"entrySecret": {"name": "entry-ids"}}})
    ref = r.env("processor")["SEMANTIC_CACHE_ENTRY_SECRET"]["secretKeyRef"]
    assert ref == {"name": "entry-ids", "key": "entry-secret"}


def test_shadow_requests_trust_what_envoy_trusts(chart: Path) -> None:
    """upstream.tls.ca reaches the processor (mounted, and named by verification.ca_file);
    insecureSkipVerify covers shadows to upstream.url only, never a server named elsewhere."""
    ca = {"upstream": {"url": "https://llm:8443", "tls": {"ca": {"secretName": "llm-ca"}}}}
    assert "ca_file" not in verification_of(chart) and "ca_file" not in verification_of(
        chart, {"upstream": ca["upstream"] | {"tls": {}}}
    )
    r = render(chart, ca)
    assert verification_of(chart, ca)["ca_file"] == "/etc/semantic-cache/upstream-ca/ca.crt"
    mounts = {m["name"]: m for m in r.container("processor")["volumeMounts"]}
    assert mounts["upstream-ca"]["mountPath"] == "/etc/semantic-cache/upstream-ca"
    volumes = {v["name"]: v for v in r.pod["spec"]["volumes"]}
    assert volumes["upstream-ca"]["secret"]["secretName"] == "llm-ca"
    own_ca = {"cache": {"settings": {"verification": {"ca_file": "/etc/own/ca.pem"}}}}
    assert verification_of(chart, ca | own_ca)["ca_file"] == "/etc/own/ca.pem"

    insecure = {"upstream": {"url": "https://llm:8443", "tls": {"insecureSkipVerify": True}}}
    assert verification_of(chart, insecure)["insecure_skip_verify"] is True
    elsewhere = {"cache": {"settings": {"verification": {"upstream_url": "https://other:8443"}}}}
    assert "insecure_skip_verify" not in verification_of(chart, insecure | elsewhere)
    assert "upstream-ca" not in {
        m["name"] for m in render(chart, insecure).container("processor")["volumeMounts"]
    }
