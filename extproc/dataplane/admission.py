"""Admission control: how much of ``max_added_latency_ms`` a request's embedding may still wait.

The embedder predicts the wait of a new lookup from its queue (``Embedder.expected_wait``), but
a process starved of CPU also queues messages in front of the event loop, where no queue model
sees them.  So the budget counts from the request's arrival (its first message, minus the loop's
lag at that moment) and the loop's current lag is charged as well.  The cache sheds the
semantic half of a lookup whose embedding is predicted to finish past what is left, and gives
up waiting when it does not finish in time (bypass ``overloaded``); the exact-key lookup and
the vector search are bounded by ``lookup_timeout_ms`` alone (a slow backend is not overload).
"""

from __future__ import annotations

LOOKUP_SHARE = 2 / 3
"""The part of ``max_added_latency_ms`` a lookup may use.  The rest is the response's: its two
trips through the processor's event loop and the CPU the passes take from Envoy and the
upstream beside it, 30–40 ms at p99 past the knee on 2 cores (bench/README.md, open loop)."""


def embedding_budget(budget_ms: int, elapsed: float, loop_lag: float) -> float | None:
    """Seconds the embedding of a request ``elapsed`` seconds old may still take (None when
    ``budget_ms`` is 0: no admission control; negative when the budget is already spent)."""
    if budget_ms <= 0:
        return None
    return budget_ms * LOOKUP_SHARE / 1000 - elapsed - loop_lag
