"""Do two answers agree? The same text, or embeddings at least ``answer_similarity`` apart.

Only semantic hits are judged, and there the cached answer was given to *another* prompt (a
paraphrase): even a deterministic request (temperature 0 and a seed) is not expected to get the
same text, so text equality counts as agreement but its absence never as disagreement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from extproc.dataplane.freshness import answer_text
from extproc.embedding.batcher import Embedder


def identical(cached: Mapping[str, Any], fresh: Mapping[str, Any]) -> bool:
    """True when the two answers are the same text (they agree without an embedding)."""
    return answer_text(cached).strip() == answer_text(fresh).strip()


async def agree(
    embedder: Embedder, cached: Mapping[str, Any], fresh: Mapping[str, Any], threshold: float
) -> tuple[bool, float]:
    """(agreement, similarity) of the cached and the fresh answer.

    The same text agrees (similarity 1); otherwise both texts are embedded by the cache's model
    with the priority of stores (behind every queued lookup) and compared by cosine similarity.
    Empty answers (tool calls only) agree only when both are empty.
    """
    a, b = answer_text(cached).strip(), answer_text(fresh).strip()
    if a == b:
        return True, 1.0
    if not a or not b:
        return False, 0.0
    va = await embedder.embed(a, deferred=True)
    vb = await embedder.embed(b, deferred=True)
    norm = float(np.linalg.norm(va) * np.linalg.norm(vb)) or 1.0
    similarity = float(np.dot(va, vb)) / norm
    return similarity >= threshold, similarity
