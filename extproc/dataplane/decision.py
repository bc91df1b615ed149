"""The record of one request's cache decision, how failures map to its reasons, and its log."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from extproc.errors import OutcomeError
from extproc.observability.metrics import Metrics
from extproc.observability.record import bypass_reason, miss_reason

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
    rejected_similarity: float = 0.0
    entry_age_s: float | None = None
    partition: str = ""
    saved_prompt_tokens: int = 0
    """On hits: the stored usage's prompt tokens, which the upstream did not have to process."""
    saved_completion_tokens: int = 0
    """On hits: the stored usage's completion tokens, which the upstream did not have to generate."""
    volatile: str = ""
    """Why the prompt or answer was found time-sensitive (``relative_time``…), or ""."""
    policy: str = ""
    """The name of the policy that applied (``route:…`` / ``model:…``), or "" for the defaults."""
    non_latin: bool = False
    """The prompt is mostly letters of a non-Latin script (Chinese, Cyrillic, Devanagari…)."""
    verifying: bool = False
    """This hit was sampled for shadow verification (docs/verification.md)."""


NON_LATIN_WARN_SECONDS = 600.0
"""At most one warning per this many seconds about non-Latin prompts."""


def lookup_failure_reason(exc: BaseException) -> str:
    """The bypass reason of an exception that ended a lookup (the one place they are mapped)."""
    if isinstance(exc, OutcomeError):
        return exc.reason
    if isinstance(exc, TimeoutError):
        return "lookup_timeout"
    return "backend_error"


def reason_header(d: Decision) -> str | None:
    """``x-semantic-cache-reason``: why a bypass, why a miss looked nothing up, or which guard
    turned a candidate down (no text)."""
    if d.outcome == "bypass":
        return bypass_reason(d.reason)
    if miss_reason(d):  # looked nothing up: the client's no-cache, a time-sensitive prompt
        return d.reason
    if d.outcome == "miss" and d.rejected_by:
        guards = ", ".join(dict.fromkeys(d.rejected_by))
        return f"rejected: {guards} {d.rejected_similarity:.4f}"
    return None


class DecisionLog:
    """Counts decisions, feeds the metrics and logs one debug line per request (never prompt text)."""

    def __init__(self, metrics: Metrics | None = None, backend: str = "", english_only: bool = False) -> None:
        self.counts: dict[str, int] = {"hit": 0, "miss": 0, "bypass": 0}
        self.bypass_reasons: Counter[str] = Counter()
        self.guard_rejections: Counter[str] = Counter()
        self.english_only = english_only
        """The model reads English only: say so when prompts are not (rate-limited)."""
        self._warned_at = -NON_LATIN_WARN_SECONDS
        self.policy_counts: dict[str, int] = {}
        """Requests per policy name (admin stats)."""
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
        if d.non_latin and self.english_only:
            self._warn_non_latin()
        if d.policy:
            self.policy_counts[d.policy] = self.policy_counts.get(d.policy, 0) + 1
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

    def _warn_non_latin(self) -> None:
        """Tell the operator, at most once per NON_LATIN_WARN_SECONDS, that the model is English-only."""
        now = time.monotonic()
        if now - self._warned_at < NON_LATIN_WARN_SECONDS:
            return
        self._warned_at = now
        log.warning(
            "prompts mostly in a non-Latin script reach the English-only embedding model "
            "all-MiniLM-L6-v2: paraphrase matching is unreliable for them (counted in "
            "semantic_cache_non_latin_prompts_total). Use a multilingual model folder or an "
            "embedding_endpoint: docs/embeddings.md#other-languages"
        )
