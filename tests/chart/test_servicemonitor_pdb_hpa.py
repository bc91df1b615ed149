"""ServiceMonitor, PDB, HPA (and the config checksum and NOTES.txt)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import NS, RELEASE, Doc, Rendered, _matches, render


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
