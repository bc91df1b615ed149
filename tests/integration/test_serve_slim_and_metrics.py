"""A running ``semantic-cache serve`` (embedding_backend auto, the Milvus backend): it never loads
torch or sentence-transformers, and every metric the chart's dashboard and alerts query is one it
really exports on /metrics."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.helpers import monitoring_queries
from tests.support.processes import Serving, start_serve, stop, unreachable_milvus
from tests.support.promql import exported, metric_names

pytestmark = pytest.mark.integration

# The packages serving must never load with the ONNX backend (they are the `torch` extra).
HEAVY = ("torch", "sentence_transformers", "transformers")
# The alert that reads kube-state-metrics, not the processor.
KUBE_STATE_METRICS = {"kube_pod_container_status_restarts_total"}
SCRAPE_SERIES = {"up"}
"""Written by Prometheus itself for every target it scrapes (the processor-down alert reads it)."""


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serving]:
    """serve under ``-X importtime`` with the Milvus backend pointed at a closed port: it starts,
    bypasses, and its /metrics carries the backend's gauges (circuit breaker included)."""
    folder = tmp_path_factory.mktemp("serve")
    section = unreachable_milvus(folder) | {"embedding_backend": "auto"}
    s = start_serve(folder, section, "-X", "importtime")
    try:
        yield s
    finally:
        stop(s.process)


def test_serve_maps_no_torch_library(serving: Serving) -> None:
    maps = Path(f"/proc/{serving.process.pid}/maps").read_text()
    libraries = {line.split()[-1] for line in maps.splitlines() if line.count(" ") >= 5}
    assert any("onnxruntime" in lib for lib in libraries), "the ONNX backend serves"
    assert not [lib for lib in libraries if re.search(r"/torch/|libtorch", lib)]


def test_serve_imports_neither_torch_nor_sentence_transformers(serving: Serving) -> None:
    # -X importtime writes one line per module imported: "import time: self | cumulative | name".
    imported = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in serving.log.read_text().splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert {"onnxruntime", "tokenizers", "extproc"} <= imported
    assert not imported & set(HEAVY)


def test_dashboard_and_alerts_query_only_exported_metrics(serving: Serving) -> None:
    live = exported(urllib.request.urlopen(f"{serving.metrics_url}/metrics", timeout=10).read().decode())
    assert "semantic_cache_circuit_breaker_state" in live
    queries, rules = monitoring_queries()
    assert len(queries) > 20 and len(rules) == 10
    for expr in queries + rules:
        names = metric_names(expr)
        assert names, expr
        # Envoy's own series: test_envoy_stats.py reads them from a real Envoy.
        unknown = {n for n in names if not n.startswith("envoy_")} - live - KUBE_STATE_METRICS - SCRAPE_SERIES
        assert not unknown, f"{sorted(unknown)} not exported by the processor, in: {expr}"
    # The dashboard shows every family the processor exports (process-level ones aside).
    families = {
        n for n in live if n.startswith("semantic_cache_") and not n.endswith(("_created", "_count", "_sum"))
    }
    shown = set().union(*(metric_names(q) for q in queries))
    assert families <= shown, f"not on the dashboard: {sorted(families - shown)}"
