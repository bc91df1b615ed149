"""Milvus sources: the client's milvus.yaml, bundled chart, Milvus Operator, external."""

from __future__ import annotations

import json
from pathlib import Path

import helm_python as helm
import jsonschema
import pytest
import yaml

from .helpers import (
    CRD_SCHEMAS,
    NS,
    PRESETS,
    RELEASE,
    Doc,
    Rendered,
    deep_merge,
    helm_render,
    loaded,
    render,
    validate_object,
    values_file,
)

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


def milvus_api_service(r: Rendered) -> Doc:
    """The milvus chart's Service that serves the Milvus API (19530): exactly one."""
    (service,) = [
        s
        for s in r.all("Service")
        if s["metadata"]["labels"].get("app.kubernetes.io/name") == "milvus"
        and 19530 in [p["port"] for p in s["spec"]["ports"]]
    ]
    return service


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

    # Bundled: the dependency's own Service, the one that serves 19530.
    for preset in ("bundled-standalone", "bundled-cluster"):
        r = rendered[preset]
        service = milvus_api_service(r)
        assert endpoint(r) == (f"{service['metadata']['name']}.{NS}.svc.cluster.local", 19530)
        assert service["metadata"]["name"] == f"{RELEASE}-milvus"
    # The milvus chart's naming rules: release names containing "milvus", fullnameOverride.
    bundled = PRESETS["bundled-standalone"].values
    for release, overrides, expected in (
        ("my-milvus", {"fullnameOverride": "router"}, "my-milvus"),
        (RELEASE, {"milvus": {"fullnameOverride": "milvus-semantic-cache"}}, "milvus-semantic-cache"),
    ):
        r = render(chart, deep_merge(bundled, overrides), name=release)
        service = milvus_api_service(r)
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
    assert {f"Deployment/{RELEASE}-milvus-standalone", f"Service/{RELEASE}-milvus"} <= set(
        milvus_objects(rendered["bundled-standalone"])
    )
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
