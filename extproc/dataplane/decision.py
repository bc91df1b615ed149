"""The record of one request's cache decision, how failures map to its reasons, and its log."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from extproc.errors import OutcomeError
from extproc.observability.metrics import Metrics

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
    confidence: float | None = None
    """The verifier's calibrated P(same meaning) of the served entry (hits; 1.0 exact)."""
    model: str = ""
    store: str = ""
    """``stored`` or the store-skip reason (``non_2xx``, ``truncated``, ``too_large``…)."""
    timings: dict[str, float] = field(default_factory=dict)
    candidates: int = 0
    best_similarity: float = 0.0
    rejected_by: list[str] = field(default_factory=list)
    entry_age_s: float | None = None
    partition: str = ""


def lookup_failure_reason(exc: BaseException) -> str:
    """The bypass reason of an exception that ended a lookup (the one place they are mapped)."""
    if isinstance(exc, OutcomeError):
        return exc.reason
    if isinstance(exc, TimeoutError):
        return "lookup_timeout"
    return "backend_error"


class DecisionLog:
    """Counts decisions, feeds the metrics and logs one debug line per request (never prompt text)."""

    def __init__(self, metrics: Metrics | None = None, backend: str = "") -> None:
        self.counts: dict[str, int] = {"hit": 0, "miss": 0, "bypass": 0}
        self.metrics = metrics
        self.backend = backend

    def __call__(self, d: Decision) -> None:
        """Record one decision."""
        self.counts[d.outcome] = self.counts.get(d.outcome, 0) + 1
        if self.metrics is not None:
            self.metrics.observe(d, self.backend)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "decision=%s reason=%s match=%s similarity=%.4f confidence=%s model=%s store=%s timings=%s",
                d.outcome,
                d.reason or "-",
                d.match or "-",
                d.similarity,
                "-" if d.confidence is None else f"{d.confidence:.4f}",
                d.model or "-",
                d.store or "-",
                {k: round(v, 2) for k, v in d.timings.items()},
            )
