"""Lint, package, versions."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import helm_python as helm
import kubernetes_validate

from .helpers import CHART, KUBE_MIN, NS, PRESETS, RELEASE, envoy_config, loaded, render, values_file


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


def test_dependency_archive_is_recognised(chart_dir: Path) -> None:
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
