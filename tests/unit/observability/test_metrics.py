"""Series that exist before their first event, and what each counter counts."""

from __future__ import annotations

from prometheus_client import generate_latest

from extproc.dataplane.decision import Decision
from extproc.observability.metrics import Metrics


class Unavailable:
    """A backend as the scrape-time gauges read it."""

    name = "milvus"

    def status(self) -> tuple[str, str]:
        return "connecting", "not yet"


def exposition(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_a_pod_that_never_hit_has_a_hit_ratio_of_zero_not_none() -> None:
    """Without a hit series at 0 the dashboard's hit ratio and the collapsed-ratio alert read
    no data on new pods that never hit."""
    text = exposition(Metrics())
    for decision, match in (("hit", "exact"), ("hit", "semantic"), ("miss", "none"), ("bypass", "none")):
        assert f'semantic_cache_requests_total{{decision="{decision}",match="{match}"}} 0.0' in text


def test_counters_of_known_labels_start_at_zero() -> None:
    metrics = Metrics()
    metrics.watch(Unavailable, "milvus")
    text = exposition(metrics)
    assert 'semantic_cache_feedback_total{verdict="wrong"} 0.0' in text
    assert 'semantic_cache_verification_skipped_total{reason="budget"} 0.0' in text
    assert 'semantic_cache_bound_decisions_total{decision="explore"} 0.0' in text
    assert 'semantic_cache_saved_tokens_total{kind="completion"} 0.0' in text
    assert 'semantic_cache_bound_changes_total 0.0' in text
    assert 'semantic_cache_backend_errors_total{backend="milvus",reason="backend_unavailable"} 0.0' in text


def test_a_models_first_verification_creates_its_three_results() -> None:
    """A disagreement first seen at 1 is invisible to increase(): with many model names the
    false-hit panels read 0."""
    metrics = Metrics()
    metrics.verified("llama", "disagree")
    text = exposition(metrics)
    assert 'semantic_cache_verifications_total{model="llama",result="disagree"} 1.0' in text
    assert 'semantic_cache_verifications_total{model="llama",result="agree"} 0.0' in text
    assert 'semantic_cache_verifications_total{model="llama",result="error"} 0.0' in text


def test_a_lookup_timeout_is_not_a_backend_error() -> None:
    metrics = Metrics()
    timed_out = Decision(outcome="bypass", reason="lookup_timeout")
    metrics.observe(timed_out, "memory")
    metrics.observe(Decision(outcome="bypass", reason="backend_error"), "memory")
    text = exposition(metrics)
    assert 'semantic_cache_bypass_total{reason="lookup_timeout"} 1.0' in text
    assert 'reason="lookup_timeout"} 1.0' not in text.split("semantic_cache_backend_errors_total", 1)[1]
    assert 'semantic_cache_backend_errors_total{backend="memory",reason="backend_error"} 1.0' in text
