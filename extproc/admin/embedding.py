"""The admin API's calls of the embedding model: any failure becomes :class:`EmbeddingFailed`.

The model may be remote (an endpoint that is down raises ``RemoteEmbeddingError``) or local (any
exception of the library): like the data plane (``SemanticCache._embed_within``), the admin API
turns every one into :class:`~extproc.errors.EmbeddingFailed`, which it answers with a 503 that
says so, instead of a bare 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

import numpy as np

from extproc.embedding.batcher import Embedder
from extproc.errors import EmbeddingFailed, SemanticCacheError


async def _model_call(call: Awaitable[np.ndarray]) -> np.ndarray:
    """Await ``call``; any exception the model raises becomes :class:`EmbeddingFailed`."""
    try:
        return await call
    except SemanticCacheError:  # already says what went wrong (Overloaded, …)
        raise
    except Exception as exc:
        raise EmbeddingFailed(f"{type(exc).__name__}: {exc}") from exc


async def embed_one(embedder: Embedder, text: str) -> np.ndarray:
    """The embedding of ``text``; :class:`EmbeddingFailed` when the model raises."""
    return await _model_call(embedder.embed(text))


async def embed_texts(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    """The embeddings of ``texts``; :class:`EmbeddingFailed` when the model raises."""
    return await _model_call(embedder.embed_many(texts))
