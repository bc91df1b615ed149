"""A deterministic toy embedding and the small cache built on it, for tests that need no model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from extproc.cache import CacheQuery, MemoryBackend, SemanticCache
from extproc.embedding.batcher import Embedder
from extproc.protocol.openai import exact_key, partition_key

DIM = 8


def toy_encode(texts: Sequence[str]) -> np.ndarray:
    """Texts like "v:1,0.5,0" map to that (normalized) vector; anything else to a hash vector."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, text in enumerate(texts):
        if text.startswith("v:"):
            values = [float(x) for x in text[2:].split(",")]
            out[i, : len(values)] = values
        else:
            rng = np.random.default_rng(abs(hash(text)) % 2**32)
            out[i] = rng.normal(size=DIM)
        out[i] /= np.linalg.norm(out[i])
    return out


def query(prompt: str, model: str = "m", scope: str = "global", fp: str = "f") -> CacheQuery:
    """A CacheQuery for ``prompt``."""
    return CacheQuery(
        model=model,
        scope=scope,
        fingerprint=fp,
        prompt=prompt,
        partition=partition_key(model, scope, fp),
        exact_key=exact_key(model, scope, fp, prompt),
    )


def answer(text: str) -> dict[str, Any]:
    """A stored completion."""
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]
    }


def make_cache(
    max_entries: int = 100,
    policy: str = "lru",
    ttl: int = 0,
    threshold: float = 0.9,
    guards: Sequence[Any] = (),
) -> SemanticCache:
    """A cache over the toy embedding."""
    backend = MemoryBackend(DIM, max_entries, policy)
    return SemanticCache(
        backend, Embedder(toy_encode, DIM), threshold, top_k=5, ttl_seconds=ttl, guards=guards
    )


class RejectContaining:
    """A guard that rejects candidates whose prompt contains a marker."""

    name = "marker"

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def reject(self, query: str, candidate: str) -> bool:
        return self.marker in candidate
