"""One documented list of bypass reasons: every reason the code can report is in it and in the docs."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import generate_latest

from extproc.dataplane.decision import Decision, reason_header
from extproc.observability.metrics import Metrics
from extproc.observability.record import BYPASS_REASONS, bypass_reason

ROOT = Path(__file__).resolve().parents[3]
# Every way a reason enters a decision: the bypass helpers, NotCacheable, the error classes.
_SET = re.compile(r'(?:_pass_through|_bypass|_mark_bypass|NotCacheable)\(\s*"([a-z_]+)"')
_CLASS_REASON = re.compile(r'^\s+reason = "([a-z_]+)"', re.M)


def reasons_in_code() -> set[str]:
    """The bypass reasons the processor's source can set."""
    found: set[str] = set()
    for path in (ROOT / "extproc").rglob("*.py"):
        found |= set(_SET.findall(path.read_text()))
    errors = (ROOT / "extproc" / "errors.py").read_text()
    store_only = {"too_large"}  # EntryTooLarge: a store-skip reason, never a bypass
    found |= set(_CLASS_REASON.findall(errors)) - store_only
    decision = (ROOT / "extproc" / "dataplane" / "decision.py").read_text()
    found |= set(re.findall(r'return "([a-z_]+)"', decision))
    return found


def test_every_reason_in_the_code_is_documented() -> None:
    found = reasons_in_code()
    assert len(found) > 10
    assert found <= set(BYPASS_REASONS), found - set(BYPASS_REASONS)
    docs = (ROOT / "docs" / "observability.md").read_text()
    for reason in BYPASS_REASONS:
        assert f"| `{reason}` |" in docs, reason


def test_never_unknown() -> None:
    assert bypass_reason("") == "stream_ended" and bypass_reason("no_scope") == "no_scope"
    metrics = Metrics()
    metrics.observe(Decision(), "memory")  # a stream that ended before any decision
    text = generate_latest(metrics.registry).decode()
    assert 'semantic_cache_bypass_total{reason="stream_ended"} 1.0' in text
    assert "unknown" not in text
    for reason in BYPASS_REASONS:  # every reason exists from the start
        assert f'semantic_cache_bypass_total{{reason="{reason}"}}' in text


def test_reason_header() -> None:
    assert reason_header(Decision(outcome="bypass", reason="no_cache_no_store")) == "no_cache_no_store"
    assert reason_header(Decision()) == "stream_ended"
    guarded = Decision(
        outcome="miss", rejected_by=["opposites", "numbers", "opposites"], rejected_similarity=0.93127
    )
    assert reason_header(guarded) == "rejected: opposites, numbers 0.9313"
    assert reason_header(Decision(outcome="miss")) is None
    assert reason_header(Decision(outcome="hit", match="exact")) is None


def test_a_miss_that_looked_nothing_up_says_why() -> None:
    from extproc.observability.tracing import span_attributes

    for reason in ("no_cache", "volatile"):
        d = Decision(outcome="miss", reason=reason)
        assert reason_header(d) == reason
        assert span_attributes(d, "memory", 0.8)["semantic_cache.bypass_reason"] == reason
        assert reason not in BYPASS_REASONS  # never a bypass
    plain = Decision(outcome="miss")
    assert reason_header(plain) is None and "semantic_cache.bypass_reason" not in span_attributes(
        plain, "m", 0.8
    )
