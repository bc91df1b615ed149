"""Values schema, and values the templates refuse."""

from __future__ import annotations

import re
from pathlib import Path

import helm_python as helm
import pytest

from .helpers import Doc, helm_render, loaded


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
    ],
)
def test_inconsistent_values_fail_the_render(chart: Path, values: Doc, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        helm_render(chart, values)
