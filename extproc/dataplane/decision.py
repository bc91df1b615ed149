"""The record of one request's cache decision, how failures map to its reasons, and its log."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from extproc.errors import OutcomeError
from extproc.observability.metrics import Metrics
from extproc.observability.record import bypass_reason

log = logging.getLogger(__name__)


@dataclass
class Decision:
    """What happened to one request, for the response header, logs, metrics and traces."""

    outcome: str = "bypass"
    """``hit`` | ``miss`` | ``bypass``."""
    reason: str = ""
    """Why a request was bypassed (``not_chat``, ``no_cache_no_store``, ``backend_error``…)."""
    match: str | None = None
    similarity: float = 0.0
    model: str = ""
    store: str = ""
    """``stored`` or the store-skip reason (``non_2xx``, ``truncated``, ``too_large``…)."""
    timings: dict[str, float] = field(default_factory=dict)
    candidates: int = 0
    best_similarity: float = 0.0
    rejected_by: list[str] = field(default_factory=list)
    rejected_similarity: float = 0.0
    entry_age_s: float | None = None
    partition: str = ""
    saved_prompt_tokens: int = 0
    """On hits: the stored usage's prompt tokens, which the upstream did not have to process."""
    saved_completion_tokens: int = 0
    """On hits: the stored usage's completion tokens, which the upstream did not have to generate."""


def lookup_failure_reason(exc: BaseException) -> str:
    """The bypass reason of an exception that ended a lookup (the one place they are mapped)."""
    if isinstance(exc, OutcomeError):
        return exc.reason
    if isinstance(exc, TimeoutError):
        return "lookup_timeout"
    return "backend_error"


def reason_header(d: Decision) -> str | None:
    """``x-semantic-cache-reason``: why a bypass, or which guard turned a candidate down (no text)."""
    if d.outcome == "bypass":
        return bypass_reason(d.reason)
    if d.outcome == "miss" and d.rejected_by:
        guards = ", ".join(dict.fromkeys(d.rejected_by))
        return f"rejected: {guards} {d.rejected_similarity:.4f}"
    return None


class DecisionLog:
    """Counts decisions, feeds the metrics and logs one debug line per request (never prompt text)."""

    def __init__(self, metrics: Metrics | None = None, backend: str = "") -> None:
        self.counts: dict[str, int] = {"hit": 0, "miss": 0, "bypass": 0}
        self.bypass_reasons: Counter[str] = Counter()
        self.guard_rejections: Counter[str] = Counter()
        self.metrics = metrics
        self.backend = backend

    def breakdown(self) -> dict[str, dict[str, int]]:
        """Bypasses by reason and guard rejections since start (admin stats), as /metrics counts them."""
        return {
            "bypass_reasons": dict(sorted(self.bypass_reasons.items())),
            "guard_rejections": dict(sorted(self.guard_rejections.items())),
        }

    def __call__(self, d: Decision) -> None:
        """Record one decision."""
        self.counts[d.outcome] = self.counts.get(d.outcome, 0) + 1
        if d.outcome == "bypass":
            self.bypass_reasons[bypass_reason(d.reason)] += 1
        self.guard_rejections.update(d.rejected_by)
        if self.metrics is not None:
            self.metrics.observe(d, self.backend)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "decision=%s reason=%s match=%s similarity=%.4f model=%s store=%s timings=%s",
                d.outcome,
                d.reason or "-",
                d.match or "-",
                d.similarity,
                d.model or "-",
                d.store or "-",
                {k: round(v, 2) for k, v in d.timings.items()},
            )
