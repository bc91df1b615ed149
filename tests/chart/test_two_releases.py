"""Two releases in one namespace: the objects with the runbook's fixed names (milvus-client-config,
allow-router-to-milvus, the Milvus resource) clash unless the second release renames them, as the
chart's README says; everything else is named after the release."""

from __future__ import annotations

from pathlib import Path

from .helpers import Doc, deep_merge, helm_render, ours, to_rendered

BOTH: Doc = {
    "cache": {"backend": "milvus"},
    "networkPolicy": {"enabled": True},
    "milvusOperator": {"enabled": True, "force": True},
}
RENAMED: Doc = {
    "milvusClient": {"configMapName": "second-milvus-client-config"},
    "networkPolicy": {"name": "second-allow-router-to-milvus"},
    "milvusOperator": {"name": "second-milvus"},
}
API = ("networking.k8s.io/v1", "milvus.io/v1beta1")


def names(chart: Path, release: str, values: Doc) -> set[tuple[str, str]]:
    r = to_rendered(helm_render(chart, values, name=release, api_versions=API))
    milvus = {("Milvus", d["metadata"]["name"]) for d in r.all("Milvus")}
    return {(d["kind"], d["metadata"]["name"]) for d in r.docs if ours(d)} | milvus


def test_fixed_names_clash_until_renamed(chart: Path) -> None:
    first = names(chart, "semantic-router", BOTH)
    clash = first & names(chart, "second", BOTH)
    assert clash == {
        ("ConfigMap", "milvus-client-config"),
        ("NetworkPolicy", "allow-router-to-milvus"),
        ("Milvus", "milvus-standalone"),
    }
    assert not first & names(chart, "second", deep_merge(BOTH, RENAMED))
