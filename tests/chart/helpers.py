"""Helpers of the chart tests: render the chart with the real Helm engine, parse and validate the objects.

The install presets (PRESETS), the ``Rendered`` view of one render, and the checks run on rendered
objects: kubernetes-validate / the fixture CRD schemas, ``envoy --mode validate`` and
``semantic-cache check-config``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml
from helm_python import _native

from extproc.cli.envoy import envoy_binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "semantic-cache"
FIXTURES = ROOT / "tests" / "chart" / "fixtures"
RELEASE = "semantic-router"
NS = "vllm-semantic-router-system"
KUBE_MIN = "1.27.0"
ENVOY_TEMPLATE = CHART / "files" / "envoy.yaml"
# The official milvus chart at the version Chart.yaml pins, from the shared folder beside the
# repository (never committed). Without it the renders fall back to the stub in fixtures/.
MILVUS_VERSION = next(
    d["version"] for d in yaml.safe_load((CHART / "Chart.yaml").read_text())["dependencies"]
)
MILVUS_ARCHIVE = ROOT.parent / "shared" / "charts" / f"milvus-{MILVUS_VERSION}.tgz"
NO_ARCHIVE = (
    f"the official milvus chart archive {MILVUS_ARCHIVE} is absent (a bare clone has no ../shared; "
    "the chart repository cannot be reached to fetch it)"
)

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
    "alerts-dashboard": Preset(
        {"metrics": {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}},
        ("monitoring.coreos.com/v1",),
        "memory",
    ),
    "tracing-https-hpa": Preset(
        {
            "upstream": {"url": "https://llm.example.com", "servedModelName": "qwen2.5-7b"},
            "tracing": {"enabled": True, "envoySamplingPercent": 25},
            "autoscaling": {"enabled": True},
        },
        backend="memory",
    ),
}


@contextlib.contextmanager
def loaded(chart: Path) -> Iterator[helm.Chart]:
    """The chart, freshly loaded."""
    with helm.Chart.load(chart) as c:
        yield c


def render(chart: Path, values: Doc | None = None, **kwargs: Any) -> Rendered:
    """Render and parse."""
    return to_rendered(helm_render(chart, values, **kwargs))


# --- validation -----------------------------------------------------------------------------

CRD_SCHEMAS = {
    ("milvus.io/v1beta1", "Milvus"): FIXTURES / "schemas" / "milvus-v1beta1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): FIXTURES / "schemas" / "servicemonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): FIXTURES / "schemas" / "prometheusrule-v1.json",
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


def ours(doc: Doc) -> bool:
    """Is ``doc`` rendered by this chart's own templates (not by the milvus dependency)?"""
    chart: str = doc["metadata"].get("labels", {}).get("helm.sh/chart", "")
    return chart.startswith("semantic-cache-")


def _matches(selector: Doc, labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def monitoring_queries() -> tuple[list[str], list[str]]:
    """The PromQL the chart ships, alerts and dashboard on: (the dashboard's panel queries and the
    series its variables read, the alert rules' expressions)."""
    shipped = {"prometheusRule": {"enabled": True, "force": True}, "grafanaDashboard": {"enabled": True}}
    r = render(CHART, {"metrics": shipped})
    dashboard = json.loads(r.one("ConfigMap", f"{RELEASE}-dashboard")["data"]["semantic-cache.json"])
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    # Variables: label_values(<series>, <label>) reads <series>.
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"])
            assert found, variable
            queries.append(found.group(1))
    (rule,) = r.all("PrometheusRule")
    return queries, [a["expr"] for g in rule["spec"]["groups"] for a in g["rules"]]
