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


def test_replicas_spread_across_nodes_and_zones(rendered: dict[str, Rendered], chart: Path) -> None:
    spec = rendered["memory"].pod["spec"]
    labels = rendered["memory"].pod["metadata"]["labels"]
    constraints = {c["topologyKey"]: c for c in spec["topologySpreadConstraints"]}
    assert set(constraints) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for c in constraints.values():
        assert c["maxSkew"] == 1 and c["whenUnsatisfiable"] == "ScheduleAnyway"
        assert _matches(c["labelSelector"], labels) and c["matchLabelKeys"] == ["pod-template-hash"]
    (term,) = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert _matches(term["podAffinityTerm"]["labelSelector"], labels)
    # Required spreading, or the user's own rules instead of the defaults.
    strict = render(chart, {"podSpread": {"whenUnsatisfiable": "DoNotSchedule"}}).pod["spec"]
    assert {c["whenUnsatisfiable"] for c in strict["topologySpreadConstraints"]} == {"DoNotSchedule"}
    own = {
        "topologySpreadConstraints": [
            {
                "maxSkew": 2,
                "topologyKey": "rack",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": RELEASE}},
            }
        ],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["cpu"]}]}
                    ]
                }
            }
        },
    }
    custom = render(chart, own).pod["spec"]
    assert custom["topologySpreadConstraints"] == own["topologySpreadConstraints"]
    assert custom["affinity"] == own["affinity"]
    off = render(chart, {"podSpread": {"enabled": False}}).pod["spec"]
    assert "topologySpreadConstraints" not in off and "affinity" not in off


def test_processor_requests_fit_the_measured_footprint(rendered: dict[str, Rendered]) -> None:
    # 232 MiB RSS loaded (ONNX), ~310 MB at the default 10k entries: request above, limit well above.
    resources = rendered["memory"].container("processor")["resources"]
    assert resources["requests"] == {"cpu": "500m", "memory": "512Mi"}
    assert resources["limits"] == {"memory": "1Gi"}
