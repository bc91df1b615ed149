"""The bundle with the official milvus chart (../shared/charts): its objects validate, the processor's
milvus.yaml names the Service it creates, the NetworkPolicy selects its pods, the auth/TLS Secrets
mount where the processor reads them. Skips with the reason when the archive is absent."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import pytest
import yaml

from extproc.config.milvus import DEFAULT_TLS_DIR, DEFAULT_TLS_FILES, parse_milvus_config

from .helpers import (
    NS,
    PRESETS,
    RELEASE,
    Doc,
    Rendered,
    _matches,
    deep_merge,
    literal_env,
    ours,
    render,
    validate_object,
)
from .test_networkpolicy import np_allows

BUNDLED = ("bundled-standalone", "bundled-cluster", "networkpolicy")
WORKLOADS = ("Deployment", "StatefulSet", "Job")


@pytest.fixture(scope="module")
def real(real_chart: Path) -> dict[str, Rendered]:
    """The bundled presets rendered with the official chart."""
    return {name: render(real_chart, PRESETS[name].values) for name in BUNDLED}


def pods(r: Rendered) -> list[tuple[str, Doc]]:
    """(Kind/name, pod template) of every workload of the milvus dependency (labels filled in:
    Pulsar's init Jobs have none)."""
    return [
        (f"{d['kind']}/{d['metadata']['name']}", {"metadata": {"labels": {}}} | d["spec"]["template"])
        for kind in WORKLOADS
        for d in r.all(kind)
        if not ours(d)
    ]


def serving(r: Rendered, service: Doc) -> list[tuple[str, Doc]]:
    """The pods a Service selects, with the container port its first port targets."""
    selector = {"matchLabels": service["spec"]["selector"]}
    return [(name, pod) for name, pod in pods(r) if _matches(selector, pod["metadata"]["labels"])]


def client(r: Rendered) -> Doc:
    """The processor's milvus.yaml connection section."""
    connection: Doc = yaml.safe_load(r.data("milvus-client-config", "milvus.yaml"))["connection"]
    return connection


@pytest.mark.parametrize("preset", BUNDLED)
def test_every_object_of_the_bundle_validates(real: dict[str, Rendered], preset: str) -> None:
    r = real[preset]
    theirs = [d for d in r.docs if not ours(d)]
    # The official chart's own objects (etcd, MinIO, Milvus, Pulsar in cluster mode) are there.
    assert {"StatefulSet", "Deployment", "Service", "ConfigMap"} <= {d["kind"] for d in theirs}
    assert len(theirs) > 10
    for doc in r.docs:
        validate_object(doc)


@pytest.mark.parametrize(
    ("preset", "release", "overrides"),
    [
        ("bundled-standalone", RELEASE, {}),
        ("bundled-cluster", RELEASE, {}),
        ("bundled-standalone", "my-milvus", {"fullnameOverride": "router"}),
        ("bundled-cluster", RELEASE, {"milvus": {"fullnameOverride": "milvus-semantic-cache"}}),
        ("bundled-standalone", RELEASE, {"milvus": {"nameOverride": "vdb", "service": {"port": 29530}}}),
    ],
)
def test_processor_connects_to_the_service_the_real_chart_creates(
    real_chart: Path, preset: str, release: str, overrides: Doc
) -> None:
    r = render(real_chart, deep_merge(PRESETS[preset].values, overrides), name=release)
    host, port = client(r)["host"], client(r)["port"]
    name, namespace, tail = host.split(".", 2)
    assert (namespace, tail) == (NS, "svc.cluster.local")
    service = r.one("Service", name)
    assert not ours(service), "the host must be the milvus chart's Service"
    (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == port]
    # That Service reaches a Milvus pod listening on the port it targets (standalone or proxy).
    targets = serving(r, service)
    assert targets, f"Service/{name} selects no pod of the milvus chart"
    for workload, pod in targets:
        ports = [p for c in pod["spec"]["containers"] for p in c.get("ports", [])]
        assert service_port["targetPort"] in [p["name"] for p in ports], workload
    component = "proxy" if "cluster" in preset else "standalone"
    assert {pod["metadata"]["labels"]["component"] for _, pod in targets} == {component}


def test_release_name_that_collides_with_the_milvus_service_fails_early(real_chart: Path) -> None:
    # The milvus chart names its Service after a release containing "milvus", as this chart does.
    with pytest.raises(helm.HelmRenderError, match='names its Service "my-milvus"'):
        render(real_chart, PRESETS["bundled-standalone"].values, name="my-milvus")


def test_network_policy_selects_the_real_milvus_pods(real: dict[str, Rendered]) -> None:
    r = real["networkpolicy"]
    policy = r.one("NetworkPolicy", "allow-router-to-milvus")
    selector = policy["spec"]["podSelector"]
    milvus, others = [], []
    for name, pod in pods(r):
        labels = pod["metadata"]["labels"]
        (milvus if labels.get("app.kubernetes.io/name") == "milvus" else others).append((name, labels))
    # Every Milvus component, and nothing of etcd, MinIO or Pulsar.
    assert {n for n, _ in milvus} >= {
        f"Deployment/{RELEASE}-milvus-{c}"
        for c in ("proxy", "querynode", "datanode", "indexnode", "mixcoord")
    }
    assert all(_matches(selector, labels) for _, labels in milvus)
    assert others and not any(_matches(selector, labels) for _, labels in others)
    # The router reaches the proxy on 19530; Milvus components reach each other on their ports.
    namespaces = {NS: {"kubernetes.io/metadata.name": NS}}
    router = r.pod["metadata"]["labels"]
    assert np_allows(policy, namespaces, NS, router, 19530)
    for _, labels in milvus:
        assert np_allows(policy, namespaces, NS, labels, 19530)
    _, etcd = next((n, labels) for n, labels in others if "etcd" in n)
    assert not np_allows(policy, namespaces, NS, etcd, 19530)


def test_auth_and_tls_secrets_mount_where_the_processor_reads_them(real_chart: Path) -> None:
    values = deep_merge(PRESETS["bundled-standalone"].values, PRESETS["auth-tls"].values)
    r = render(real_chart, values)
    for doc in r.docs:
        validate_object(doc)
    raw = yaml.safe_load(r.data("milvus-client-config", "milvus.yaml"))
    # The processor's own parser, with the environment the pod gives it.
    settings = parse_milvus_config(raw, "milvus.yaml", env=literal_env(r))
    assert settings.auth_enabled and settings.tls_enabled
    env = r.env("processor")
    assert env["MILVUS_USERNAME"]["secretKeyRef"]["name"] == "milvus-auth"
    assert env["MILVUS_PASSWORD"]["secretKeyRef"]["name"] == "milvus-auth"
    assert (settings.username, settings.password) == ("reader", "stand-in")
    mounts = {m["name"]: m["mountPath"] for m in r.container("processor")["volumeMounts"]}
    volumes = {v["name"]: v for v in r.pod["spec"]["volumes"]}
    (tls_volume,) = [n for n, v in volumes.items() if v.get("secret", {}).get("secretName") == "milvus-tls"]
    # No ca_file in the file: the processor reads ca.crt from DEFAULT_TLS_DIR, where it must be.
    ca = settings.ca_file or str(Path(DEFAULT_TLS_DIR) / DEFAULT_TLS_FILES["ca_file"])
    assert Path(ca).parent == Path(mounts[tls_volume])
    assert Path(ca).name == "ca.crt"
    # The endpoint is still the real chart's Service.
    assert (
        r.one("Service", client(r)["host"].split(".")[0])["metadata"]["labels"]["component"] == "standalone"
    )
