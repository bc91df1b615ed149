"""What observability reads from the layers above it, as protocols (it never imports them)."""

from __future__ import annotations

from typing import Protocol


class DecisionRecord(Protocol):
    """The fields of one request's decision that metrics and spans read."""

    outcome: str
    reason: str
    match: str | None
    similarity: float
    confidence: float | None
    model: str
    store: str
    timings: dict[str, float]
    candidates: int
    best_similarity: float
    rejected_by: list[str]
    entry_age_s: float | None
    partition: str


class BackendLike(Protocol):
    """What the scrape-time gauges read from a cache backend."""

    name: str

    def status(self) -> tuple[str, str]:
        """(state, detail): ``ready`` or why the backend bypasses."""
        ...
