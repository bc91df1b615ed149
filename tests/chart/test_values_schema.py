"""Values schema, and values the templates refuse."""

from __future__ import annotations

import re
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from extproc.config.milvus import _SECTIONS, parse_milvus_config

from .helpers import Doc, check_config, helm_render, loaded, render


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cache": {"backend": "redis"}}, "/cache/backend"),
        ({"scope": {"mode": "tenant"}}, "/scope/mode"),
        ({"upstream": {"url": "vllm:8000"}}, "/upstream/url"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"envoy": {"port": 70000}}, "/envoy/port"),
        (
            {"milvusClient": {"connection": {"auth": {"password": "hunter2"}}}},
            "/milvusClient/connection/auth/password",
        ),
        ({"milvusOperator": {"mode": "distributed"}}, "/milvusOperator/mode"),
        ({"cache": {"settings": {"similarity_threshold": 1.5}}}, "/cache/settings/similarity_threshold"),
        ({"cache": {"settings": {"backend_type": "milvus"}}}, "backend_type"),
        ({"envoy": {"templateVars": {"BAD-NAME": "x"}}}, "BAD-NAME"),
        ({"replicas": 3}, "replicas"),
        ({"cache": {"settings": {"policies": [{"match": {"modle": "x"}, "enabled": False}]}}}, "modle"),
        ({"cache": {"settings": {"policies": [{"ttl_seconds": 5}]}}}, "/cache/settings/policies/0"),
        # Values the processor refuses at start (extproc/config/milvus.py, settings.py): caught
        # here instead of as a crash-looping pod.
        ({"milvusClient": {"search": {"topk": 1001}}}, "/milvusClient/search/topk"),
        (
            {"milvusClient": {"collection": {"index": {"type": "IVF_PQ"}}}},
            "/milvusClient/collection/index/type",
        ),
        ({"milvusClient": {"search": {"timeout_ms": 0}}}, "/milvusClient/search/timeout_ms"),
        (
            {"milvusClient": {"maintenance": {"sweep_interval_seconds": 0}}},
            "/milvusClient/maintenance/sweep_interval_seconds",
        ),
        ({"milvusClient": {"maintenance": {"sweep_every": 5}}}, "sweep_every"),
        (
            {"cache": {"backend": "milvus", "settings": {"eviction_policy": "lru"}}},
            "/cache/settings/eviction_policy",
        ),
        (
            {"cache": {"backend": "milvus", "settings": {"eviction_policy": "lfu"}}},
            "/cache/settings/eviction_policy",
        ),
        ({"upstream": {"tls": {"insecureSkipVerify": "yes"}}}, "/upstream/tls/insecureSkipVerify"),
        ({"upstream": {"tls": {"ca": {"secret": "x"}}}}, "secret"),
        ({"processor": {"listenAddress": "eth0"}}, "/processor/listenAddress"),
    ],
)
def test_schema_rejects_bad_values(chart: Path, values: Doc, message: str) -> None:
    with loaded(chart) as c, pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        c.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        helm_render(chart, values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"milvus": {"enabled": True}, "milvusOperator": {"enabled": True, "force": True}}, "are exclusive"),
        (
            {"milvus": {"enabled": True, "pulsar": {"enabled": True}, "pulsarv3": {"enabled": True}}},
            "two Pulsars",
        ),
        ({"drain": {"maxSeconds": 900}}, "terminationGracePeriodSeconds"),
        # min + max + 10 no longer suffices: the processor's 30 s shutdown grace comes on top.
        ({"drain": {"maxSeconds": 600}, "terminationGracePeriodSeconds": 615}, r"\+ 10 = 645"),
        (
            {"cache": {"settings": {"server": {"shutdown_grace_seconds": 60}}}},
            r"terminationGracePeriodSeconds \(660\) must be at least .* \(60\) \+ 10 = 675",
        ),
    ],
)
def test_inconsistent_values_fail_the_render(chart: Path, values: Doc, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        helm_render(chart, values)


@pytest.mark.parametrize(
    "values",
    [
        {"cache": {"backend": "milvus", "settings": {"eviction_policy": "fifo"}}},
        {"cache": {"backend": "memory", "settings": {"eviction_policy": "lfu"}}},
        {"cache": {"backend": "milvus"}, "milvusClient": {"search": {"topk": 1000}}},
        {
            "cache": {"backend": "milvus"},
            "milvusClient": {
                "collection": {"index": {"type": "FLAT", "params": {"M": None, "efConstruction": None}}}
            },
        },
    ],
    ids=["milvus-fifo", "memory-lfu", "topk-1000", "flat-index"],
)
def test_schema_bounds_are_the_processors(chart: Path, tmp_path: Path, values: Doc) -> None:
    """The edges the schema lets through start the processor (check-config with the pod's files)."""
    result = check_config(render(chart, values), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_milvus_yaml_key_is_settable(chart: Path, tmp_path: Path) -> None:
    """milvusClient mirrors milvus.yaml: with every optional value set, the rendered file has
    every key the processor reads, and the processor takes the values."""
    values: Doc = {
        "cache": {"backend": "milvus"},
        "milvusClient": {
            "connection": {
                "uri": "https://milvus.example:19530",
                "database": "cache",
                "auth": {"enabled": True},
                "tls": {
                    "enabled": True,
                    "ca_file": "/etc/semantic-cache/milvus-tls/ca.crt",
                    "cert_file": "/etc/semantic-cache/milvus-tls/client.crt",
                    "key_file": "/etc/semantic-cache/milvus-tls/client.key",
                    "server_name": "milvus.example",
                },
            },
            "search": {"timeout_ms": 2500},
            "maintenance": {"sweep_interval_seconds": 45},
        },
    }
    r = render(chart, values)
    text = r.data("milvus-client-config", "milvus.yaml")
    rendered = yaml.safe_load(text)

    def paths(doc: Doc, prefix: str = "") -> set[str]:
        out = set()
        for key, value in doc.items():
            name = f"{prefix}{key}"
            # params are free-form maps of the index / search, not keys of milvus.yaml
            if isinstance(value, dict) and not key.endswith("params"):
                out |= paths(value, f"{name}.")
            else:
                out.add(name)
        return out

    known = {
        f"{section}.{key}"
        for section, spec in _SECTIONS.items()
        for key, (kind, _, _) in spec.items()
        if kind is not dict or key.endswith("params")
    }
    assert paths(rendered) == known
    settings = parse_milvus_config(rendered, "milvus.yaml", {"MILVUS_USERNAME": "u", "MILVUS_PASSWORD": "p"})
    assert (settings.search_timeout_ms, settings.sweep_interval_seconds) == (2500, 45.0)
    defaults = yaml.safe_load(
        render(chart, {"cache": {"backend": "milvus"}}).data("milvus-client-config", "milvus.yaml")
    )
    assert (
        "timeout_ms" not in defaults["search"] and "maintenance" not in defaults
    )  # the processor's defaults


def test_grace_period_covers_drain_and_processor_shutdown(chart: Path) -> None:
    for grace, seconds in ((None, 645), (12.5, 628)):
        server = {} if grace is None else {"server": {"shutdown_grace_seconds": grace}}
        values: Doc = {"cache": {"settings": server}, "terminationGracePeriodSeconds": seconds}
        pod = render(chart, values).pod["spec"]
        assert pod["terminationGracePeriodSeconds"] == seconds
        with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds"):
            helm_render(chart, values | {"terminationGracePeriodSeconds": seconds - 1})
