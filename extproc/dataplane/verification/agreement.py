"""Do two answers to one request agree? Exact text when deterministic, else embedding similarity."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from extproc.dataplane.freshness import answer_text
from extproc.embedding.batcher import Embedder


def deterministic(request: Mapping[str, Any]) -> bool:
    """True for a request the upstream answers the same way twice: temperature 0 and a seed."""
    temperature = request.get("temperature")
    seed = request.get("seed")
    number = isinstance(temperature, int | float) and not isinstance(temperature, bool)
    return number and temperature == 0 and isinstance(seed, int) and not isinstance(seed, bool)


async def agree(
    embedder: Embedder,
    cached: Mapping[str, Any],
    fresh: Mapping[str, Any],
    threshold: float,
    exact: bool = False,
) -> tuple[bool, float]:
    """(agreement, similarity) of the cached and the fresh answer.

    ``exact``: the texts must be equal (similarity 1 or 0). Otherwise both texts are embedded by
    the cache's model with the priority of stores (behind every queued lookup) and compared by
    cosine similarity. Empty answers (tool calls only) agree only when both are empty.
    """
    a, b = answer_text(cached).strip(), answer_text(fresh).strip()
    if exact or not a or not b:
        same = a == b
        return same, 1.0 if same else 0.0
    if a == b:
        return True, 1.0
    va = await embedder.embed(a, deferred=True)
    vb = await embedder.embed(b, deferred=True)
    norm = float(np.linalg.norm(va) * np.linalg.norm(vb)) or 1.0
    similarity = float(np.dot(va, vb)) / norm
    return similarity >= threshold, similarity
