"""The Grafana dashboard ConfigMap: off by default, labelled for the Grafana sidecar, valid JSON whose
panels all query the chosen Prometheus data source (the metric names are checked against a live
processor in tests/integration/test_serve_slim_and_metrics.py)."""

from __future__ import annotations

import json
from pathlib import Path

from .helpers import NS, RELEASE, Rendered, render, validate_object


def test_dashboard_is_opt_in(rendered: dict[str, Rendered]) -> None:
    assert f"ConfigMap/{RELEASE}-dashboard" not in rendered["memory"].names()


def test_dashboard_configmap_for_the_grafana_sidecar(chart: Path) -> None:
    values = {"metrics": {"grafanaDashboard": {"enabled": True, "folder": "LLM", "namespace": "monitoring"}}}
    cm = render(chart, values).one("ConfigMap", f"{RELEASE}-dashboard")
    validate_object(cm)
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    (name,) = cm["data"]
    dashboard = json.loads(cm["data"][name])
    assert dashboard["uid"] == "semantic-cache"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    titles = {p["title"] for p in panels}
    assert {"Hit ratio", "Bypasses by reason", "Lookup (exact + embed + search)", "Backend serving"} <= titles
    assert {"Entries and evictions", "Similarity of semantic hits", "Candidates rejected by guards"} <= titles
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            # Every query is scoped to the chosen release, never all namespaces at once.
            assert 'namespace="$namespace"' in target["expr"] and 'job=~"$job"' in target["expr"]
    default = render(chart, {"metrics": {"grafanaDashboard": {"enabled": True}}})
    assert default.one("ConfigMap", f"{RELEASE}-dashboard")["metadata"]["namespace"] == NS
    assert "annotations" not in default.one("ConfigMap", f"{RELEASE}-dashboard")["metadata"]
