"""A user's verifier guard ("package.module:function"), and a cross-encoder one to start from."""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from extproc.cache.guards.base import Guard
from extproc.errors import ConfigError

if TYPE_CHECKING:
    from extproc.config.settings import CacheSettings
    from extproc.embedding.batcher import Embedder

ScoreFn = Callable[[Sequence[tuple[str, str]]], Sequence[float]]


class CrossEncoderVerifier:
    """Adapts a pair scorer (e.g. ``sentence_transformers.CrossEncoder(path).predict``) to a guard.

    The scorer runs on the embedding worker thread, never on the event loop; a pair scoring
    below ``min_score`` is rejected.
    """

    def __init__(self, score: ScoreFn, min_score: float, embedder: Embedder, name: str = "verifier") -> None:
        self.score = score
        self.min_score = min_score
        self.embedder = embedder
        self.name = name

    async def reject(self, query: str, candidate: str) -> bool:
        """True when the scorer rates the pair below ``min_score``."""
        scores = await self.embedder.run(self.score, [(query, candidate)])
        return float(scores[0]) < self.min_score


VerifierFactory = Callable[["CacheSettings", "Embedder"], Guard | Awaitable[Guard]]


def load_verifier_factory(spec: str) -> VerifierFactory:
    """Import ``"package.module:function"``; the function builds the verifier guard."""
    where = f"semantic_cache.verifier {spec!r}"
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f'{where}: must look like "package.module:function"')
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{where}: cannot import {module_name} ({exc}); install it or fix the name"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"{where}: {module_name} has no function {attr}")
    return factory  # type: ignore[no-any-return]
