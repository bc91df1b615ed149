"""Admission control: how much of ``max_added_latency_ms`` a request's lookup may still spend.

The embedder predicts the wait of a new lookup from its queue (``Embedder.expected_wait``), but
a process starved of CPU also queues messages in front of the event loop, where no queue model
sees them.  So the budget counts from the request's arrival (its first message, minus the loop's
lag at that moment), the loop's current lag is charged as well, and the lookup is cut off when
the budget runs out: past it the request goes upstream at once (bypass ``overloaded``).
"""

from __future__ import annotations

EXACT_LOOKUP_FLOOR = 0.02
"""Seconds an exact-key lookup may take when the latency budget is already spent (an in-memory
one never uses them; Milvus answers a primary-key query in a few milliseconds)."""


def lookup_budget(
    budget_ms: int, lookup_timeout: float, elapsed: float, loop_lag: float
) -> tuple[float | None, float]:
    """(max_wait, timeout) in seconds for a lookup ``elapsed`` seconds after its request arrived.

    ``max_wait`` (None when ``budget_ms`` is 0: no admission control) is what the embedding may
    still take; the cache sheds the semantic half when its predicted wait is longer.  ``timeout``
    bounds the whole lookup: the smaller of ``lookup_timeout`` and what is left of the budget.
    """
    if budget_ms <= 0:
        return None, lookup_timeout
    left = budget_ms / 1000 - elapsed - loop_lag
    return left, min(lookup_timeout, max(left, EXACT_LOOKUP_FLOOR))
