"""Every preset: each object validates; the names, labels, mounts, environment and probes the runbook
and the processor rely on; real Envoy and check-config on the rendered configs; no secret values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from .helpers import (
    PRESETS,
    RELEASE,
    Rendered,
    check_config,
    envoy_validate,
    ours,
    socket_of,
    validate_object,
)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_object_validates(rendered: dict[str, Rendered], preset: str) -> None:
    r = rendered[preset]
    kinds = {d["kind"] for d in r.docs}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds
    for doc in r.docs:
        validate_object(doc)


@pytest.mark.parametrize("preset", PRESETS)
def test_runbook_names_and_labels(rendered: dict[str, Rendered], preset: str) -> None:
    r = rendered[preset]
    deployment = r.one("Deployment", RELEASE)
    labels = r.pod["metadata"]["labels"]
    assert labels["app"] == RELEASE and labels["app.kubernetes.io/name"] == RELEASE
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    annotations = r.pod["metadata"]["annotations"]
    assert annotations["kubectl.kubernetes.io/default-container"] == "processor"
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
    assert set(r.one("ConfigMap", f"{RELEASE}-config")["data"]) == {"config.yaml"}
    assert set(r.one("ConfigMap", "milvus-client-config")["data"]) == {"milvus.yaml"}
    # Both Services select exactly this pod.
    http = r.one("Service", RELEASE)
    metrics = r.one("Service", f"{RELEASE}-metrics")
    for service in (http, metrics):
        assert service["spec"]["selector"].items() <= labels.items()
    assert http["spec"]["ports"][0]["targetPort"] == "http"
    assert metrics["spec"]["ports"][0]["targetPort"] == "metrics"
    assert [c["name"] for c in r.pod["spec"]["containers"]] == ["processor", "envoy"]
    assert r.container("processor")["image"] == "semantic-cache:0.1.0"
    assert re.fullmatch(r"envoyproxy/envoy:v1\.40\.\d+", r.container("envoy")["image"])


@pytest.mark.parametrize("preset", PRESETS)
def test_pod_mounts_env_probes_and_security(rendered: dict[str, Rendered], preset: str) -> None:
    r = rendered[preset]
    spec = r.pod["spec"]
    processor, envoy = r.container("processor"), r.container("envoy")
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in processor["volumeMounts"]}

    # config/config.yaml and config/semantic-cache/milvus.yaml under the working directory.
    assert processor["workingDir"] == "/app"
    sources = volumes[mounts["/app/config"]["name"]]["projected"]["sources"]
    projected = {
        (s["configMap"]["name"], i["key"], i["path"]) for s in sources for i in s["configMap"]["items"]
    }
    assert projected == {
        (f"{RELEASE}-config", "config.yaml", "config.yaml"),
        ("milvus-client-config", "milvus.yaml", "semantic-cache/milvus.yaml"),
    }
    tls = mounts["/etc/semantic-cache/milvus-tls"]
    assert tls["readOnly"] is True
    assert volumes[tls["name"]]["secret"] == {
        "secretName": "milvus-tls",
        "optional": True,
        "defaultMode": 0o440,
    }

    env = r.env("processor")
    token = preset == "auth-tls"
    assert env["SEMANTIC_CACHE_CONFIG"] == "/app/config/config.yaml"
    assert env["SEMANTIC_CACHE_GRPC_ADDRESS"] == "127.0.0.1:50051"
    assert env["SEMANTIC_CACHE_METRICS_ADDRESS"] == "0.0.0.0:9190"
    assert env["SEMANTIC_CACHE_ADMIN_ADDRESS"] == ("0.0.0.0:9191" if token else "127.0.0.1:9191")
    assert ("SEMANTIC_CACHE_ADMIN_TOKEN" in env) is token
    assert env["SEMANTIC_CACHE_SCOPE_MODE"] == ("header" if token else "global")
    assert env["SEMANTIC_CACHE_SCOPE_HEADER"] == "x-tenant-id"
    assert env["LOG_LEVEL"] and env["SEMANTIC_CACHE_LOG_FORMAT"] in ("plain", "json")
    for var, key in (("MILVUS_USERNAME", "username"), ("MILVUS_PASSWORD", "password")):
        assert env[var] == {"secretKeyRef": {"name": "milvus-auth", "key": key, "optional": True}}
    assert env["OTEL_TRACES_EXPORTER"] == ("otlp" if preset == "tracing-https-hpa" else "none")

    # Only the metrics port (and the admin port with a token) is declared; gRPC is loopback.
    assert {p["name"] for p in processor["ports"]} == ({"metrics", "admin"} if token else {"metrics"})
    assert envoy["ports"] == [
        {"name": "http", "containerPort": 8801, "protocol": "TCP"},
        {"name": "envoy-metrics", "containerPort": 9902, "protocol": "TCP"},
    ]

    # Readiness follows Envoy only; the processor has liveness (and startup) probes.
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert "readinessProbe" not in processor
    assert processor["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert processor["startupProbe"]["httpGet"]["port"] == "metrics"

    # Drain: both containers run the preStop script; the grace period covers the longest wait.
    for container, mode in ((envoy, "envoy"), (processor, "processor")):
        assert container["lifecycle"]["preStop"]["exec"]["command"][-1] == mode
    drain_max = int(r.env("envoy")["DRAIN_MAX_SECONDS"])
    assert spec["terminationGracePeriodSeconds"] >= drain_max + int(r.env("envoy")["DRAIN_MIN_SECONDS"])
    assert drain_max >= 600

    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    for container in (processor, envoy):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


@pytest.mark.parametrize("preset", PRESETS)
def test_envoy_config_is_valid_for_real_envoy(
    rendered: dict[str, Rendered], preset: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    r = rendered[preset]
    text = r.data(f"{RELEASE}-envoy", "envoy.yaml")
    config = yaml.safe_load(text)
    listener, stats = config["static_resources"]["listeners"]
    ports = {p["name"]: p["containerPort"] for p in r.container("envoy")["ports"]}
    assert socket_of(listener["address"]) == ("0.0.0.0", ports["http"])
    assert socket_of(config["admin"]["address"])[0] == "127.0.0.1"
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    # Envoy's metrics: the one admin page, on the port the Service and ServiceMonitor name.
    assert socket_of(stats["address"]) == ("0.0.0.0", ports["envoy-metrics"])
    admin = clusters["envoy_admin"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert socket_of(admin["endpoint"]["address"]) == socket_of(config["admin"]["address"])
    endpoint = clusters["semantic_cache"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert socket_of(endpoint["endpoint"]["address"]) == ("127.0.0.1", 50051)
    filters = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
    (ext_proc,) = [f for f in filters if f["name"] == "envoy.filters.http.ext_proc"]
    assert ext_proc["typed_config"]["failure_mode_allow"] is True
    args = r.container("envoy")["args"]
    assert args[args.index("--config-path") + 1] == "/etc/envoy/envoy.yaml"
    result = envoy_validate(text, tmp_path_factory.getbasetemp())
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("preset", PRESETS)
def test_check_config_accepts_rendered_configs(
    rendered: dict[str, Rendered], preset: str, tmp_path: Path
) -> None:
    r = rendered[preset]
    result = check_config(r, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"backend_type: {PRESETS[preset].backend}" in result.stdout
    assert "backend_config_path: config/semantic-cache/milvus.yaml" in result.stdout
    # The environment's listen address and scope won over the file.
    assert "server.grpc_address: 127.0.0.1:50051" in result.stdout
    assert "(env SEMANTIC_CACHE_GRPC_ADDRESS)" in result.stdout
    assert f"scope_mode: {r.env('processor')['SEMANTIC_CACHE_SCOPE_MODE']}" in result.stdout


@pytest.mark.parametrize("preset", PRESETS)
def test_no_secret_value_in_any_configmap(rendered: dict[str, Rendered], preset: str) -> None:
    r = rendered[preset]
    # Only this chart's own objects: the milvus chart's MinIO has a Secret of its own keys.
    assert not [s for s in r.all("Secret") if ours(s)], "the chart never carries secret values"
    milvus = yaml.safe_load(r.data("milvus-client-config", "milvus.yaml"))
    auth = milvus["connection"]["auth"]
    if auth["enabled"]:
        assert auth == {"enabled": True, "username": "${MILVUS_USERNAME}", "password": "${MILVUS_PASSWORD}"}
    else:
        assert auth == {"enabled": False}
    for cm in filter(ours, r.all("ConfigMap")):
        for value in cm["data"].values():
            for line in value.splitlines():
                if re.search(r"(password|token|secret)\s*:", line, re.I):
                    assert re.search(r":\s*\"?\$\{[A-Z_]+\}\"?\s*$", line), line
