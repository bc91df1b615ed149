"""Guards run after the vector search: a candidate above the threshold is served only if
every guard accepts it.  :func:`build_guards` builds them from settings, for the server and
the ``eval`` tool alike.

Cheap rule guards (``rules.py``) run first, then the content guard (``content.py``); a user's
verifier (``verifier.py``, e.g. a cross-encoder) runs last, if configured.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

from extproc.cache.guards.base import Guard
from extproc.cache.guards.code import CodeGuard
from extproc.cache.guards.content import ContentGuard, WordVectorCache, missing_words, modifiers
from extproc.cache.guards.direction import DirectionGuard
from extproc.cache.guards.instructions import InstructionsGuard
from extproc.cache.guards.learned import BUILTIN, ConfidenceScorer, load_model
from extproc.cache.guards.rules import NegationGuard, NumbersGuard, OppositesGuard, UnitsGuard
from extproc.cache.guards.verifier import CrossEncoderVerifier, load_verifier_factory
from extproc.config.settings import model_name
from extproc.errors import ConfigError

if TYPE_CHECKING:
    from extproc.config.settings import CacheSettings
    from extproc.embedding.batcher import Embedder

log = logging.getLogger(__name__)

__all__ = [
    "CodeGuard",
    "ConfidenceScorer",
    "ContentGuard",
    "CrossEncoderVerifier",
    "DirectionGuard",
    "Guard",
    "InstructionsGuard",
    "NegationGuard",
    "NumbersGuard",
    "OppositesGuard",
    "UnitsGuard",
    "build_guards",
    "build_scorer",
    "missing_words",
    "modifiers",
]


async def build_guards(settings: CacheSettings, embedder: Embedder) -> list[Guard]:
    """The guards enabled in ``settings``, cheapest first (shared by the server and ``eval``)."""
    guards: list[Any] = []
    if settings.guard_numbers:
        guards.append(NumbersGuard())
    if settings.guard_units:
        guards.append(UnitsGuard())
    if settings.guard_negation:
        guards.append(NegationGuard())
    if settings.guard_opposites:
        guards.append(OppositesGuard())
    if settings.guard_direction:
        guards.append(DirectionGuard())
    if settings.guard_code:
        guards.append(CodeGuard())
    if settings.guard_instructions:
        guards.append(InstructionsGuard())
    if settings.guard_content:
        guards.append(
            ContentGuard(
                embedder,
                settings.guard_content_min_alignment,
                swaps=settings.guard_content_swaps,
                modifiers=settings.guard_content_modifiers,
                name_alignment=settings.guard_content_name_alignment,
            )
        )
    if settings.verifier:
        factory = load_verifier_factory(settings.verifier)
        try:
            made = factory(settings, embedder)
            verifier = await made if inspect.isawaitable(made) else made
        except Exception as exc:
            raise ConfigError(
                f"semantic_cache.verifier {settings.verifier!r}: the factory failed: {exc!r}; it is "
                "called as factory(settings, embedder) and must return a guard"
            ) from exc
        if not isinstance(getattr(verifier, "name", None), str) or not callable(
            getattr(verifier, "reject", None)
        ):
            raise ConfigError(
                f"semantic_cache.verifier {settings.verifier!r}: the factory returned "
                f"{type(verifier).__name__}, which has no name and reject(query, candidate); "
                "return an object with both"
            )
        guards.append(verifier)
    return guards


def build_scorer(settings: CacheSettings, embedder: Embedder, guards: list[Guard]) -> ConfidenceScorer | None:
    """The learned verifier ``verifier_model`` names (sharing the content guard's word vectors),
    or None when it is ``""``."""
    if not settings.verifier_model:
        return None
    words = next((g.words for g in guards if isinstance(g, ContentGuard)), None)
    if words is None and embedder.has_words:
        words = WordVectorCache(embedder)
    model = load_model(settings.verifier_model, settings.source)
    # The model that makes the vectors, wherever it runs (a remote endpoint serves its own).
    serving = settings.embedding_identity
    same_model = model_name(model.embedding_model) == serving
    other = model.embedding_dim != embedder.dim or not same_model
    if settings.verifier_model == BUILTIN and model.embedding_dim and other:
        # its embedding weights mean nothing for another model's vectors: the text features alone
        log.info(
            "verifier: the built-in model reads %s embeddings, the cache uses %s: using the built-in "
            "model of the text features alone (train one on your pairs with semantic-cache train-verifier)",
            model.embedding_model,
            serving,
        )
        model = load_model(BUILTIN, text_only=True)
    if model.embedding_dim and model.embedding_dim != embedder.dim:
        raise ConfigError(
            f"semantic_cache.verifier_model {settings.verifier_model!r} reads {model.embedding_dim}-d "
            f"embeddings ({model.embedding_model or 'unknown model'}); {serving} gives "
            f"{embedder.dim}: retrain it with semantic-cache train-verifier, or point verifier_model at a "
            "model trained on this one"
        )
    if model.embedding_dim and model.embedding_model and not same_model:
        log.warning(
            "verifier_model %r was trained on %s embeddings, the cache uses %s: its confidence is only "
            "right if they are the same model",
            settings.verifier_model,
            model.embedding_model,
            serving,
        )
    return ConfidenceScorer(model, words, embedder.embed)
