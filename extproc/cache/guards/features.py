"""Features of a (query, candidate) pair for the learned verifier, from what the guards compute.

One function computes them for the server, ``eval`` and ``train-verifier`` alike, so a pair
gets the same features (and so the same confidence) wherever it is scored.  Word vectors are
needed only when both prompts have a word the other lacks, or a name is on one side only
(the cases where aligning words can change a feature); otherwise the text alone decides.

A model may also read the two sentence embeddings themselves (:func:`embedding_features`: their
element-wise product and absolute difference, the classic input of a sentence-pair classifier),
which say *along which directions* the prompts differ, where the cosine only says how much.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from extproc.cache.guards.content import _SKIP, _unaligned, missing_words, modifiers
from extproc.cache.guards.direction import DirectionGuard
from extproc.cache.guards.lexical import STOPWORDS, Analysis, analyze
from extproc.cache.guards.rules import NegationGuard, NumbersGuard, OppositesGuard
from extproc.embedding.base import WordVectors

FEATURES = (
    "cosine",
    "cosine_above_0.9",
    "cosine_above_0.95",
    "numbers_differ",
    "units_differ",
    "negation",
    "opposites",
    "direction",
    "missing_min",
    "missing_max",
    "names_missing",
    "unaligned_min",
    "unaligned_max",
    "unaligned_names",
    "swap",
    "modifier",
    "content_overlap",
    "length_ratio",
    "length_log",
    "question_word_differs",
    "identical_words",
)
"""The feature names, in the order of the vectors :func:`finish` returns."""

EMBEDDING_FEATURES = ("product", "abs_difference")
"""What :func:`embedding_features` appends, each as long as the embedding: u*v, then |u-v|."""

WORD_ALIGNMENT = 0.5
"""Cosine at which a word's contextual vector counts as a counterpart (the content guard's)."""
NAME_ALIGNMENT = 0.7
"""The same for names (Austria, Python): names of one kind align at 0.5-0.7."""

_QUESTION_WORDS = ("what", "how", "why", "when", "where", "who", "which", "whom", "whose")
_NUMBERS, _NEGATION, _OPPOSITES, _DIRECTION = (
    NumbersGuard(),
    NegationGuard(),
    OppositesGuard(),
    DirectionGuard(),
)


@dataclass(frozen=True)
class TextPart:
    """The features the text alone gives, and the missing words that word vectors may align."""

    query: str
    candidate: str
    a: Analysis
    b: Analysis
    missing_a: list[str]
    missing_b: list[str]
    values: dict[str, float]

    @property
    def needs_words(self) -> bool:
        """True when word vectors could change a feature (see the module docstring)."""
        names = any(w in self.a.names for w in self.missing_a) or any(
            w in self.b.names for w in self.missing_b
        )
        return bool(self.missing_a and self.missing_b) or names


def _content(a: Analysis) -> set[str]:
    return {s for w, s in zip(a.words, a.stems, strict=True) if w not in STOPWORDS and w.isalpha()}


def _question_word(a: Analysis) -> str:
    word = next((w for w in a.words if w in _QUESTION_WORDS), "")
    return "who" if word == "whom" else word  # "painted by whom?" asks "who painted?"


def text_part(query: str, candidate: str, cosine: float) -> TextPart:
    """Everything but word alignment (pure text, microseconds)."""
    a, b = analyze(query), analyze(candidate)
    missing_a, missing_b = missing_words(a, b), missing_words(b, a)
    content_a, content_b = _content(a), _content(b)
    union = content_a | content_b
    len_a, len_b = max(1, len(a.words)), max(1, len(b.words))
    qa, qb = _question_word(a), _question_word(b)
    values = {
        "cosine": cosine,
        "cosine_above_0.9": max(0.0, cosine - 0.9),
        "cosine_above_0.95": max(0.0, cosine - 0.95),
        "numbers_differ": float(_NUMBERS.reject(query, candidate)),
        "units_differ": float(bool(a.units and b.units and a.units != b.units)),
        "negation": float(_NEGATION.reject(query, candidate)),
        "opposites": float(_OPPOSITES.reject(query, candidate)),
        "direction": float(_DIRECTION.reject(query, candidate)),
        "missing_min": float(np.log1p(min(len(missing_a), len(missing_b)))),
        "missing_max": float(np.log1p(max(len(missing_a), len(missing_b)))),
        "names_missing": float(sum(w in a.names for w in missing_a) + sum(w in b.names for w in missing_b)),
        "modifier": float(bool(modifiers(a, b, missing_a) or modifiers(b, a, missing_b))),
        "content_overlap": len(content_a & content_b) / len(union) if union else 1.0,
        "length_ratio": min(len_a, len_b) / max(len_a, len_b),
        "length_log": float(np.log(len_a + len_b)),
        "question_word_differs": float(bool(qa and qb and qa != qb)),
        "identical_words": float(
            [w for w in a.words if w not in _SKIP] == [w for w in b.words if w not in _SKIP]
        ),
    }
    return TextPart(query, candidate, a, b, missing_a, missing_b, values)


def finish(part: TextPart, words_a: WordVectors | None, words_b: WordVectors | None) -> np.ndarray:
    """The full feature vector; ``words_*`` are needed only when ``part.needs_words``."""
    lone_a, lone_b = part.missing_a, part.missing_b
    if part.needs_words and words_a is not None and words_b is not None:
        lone_a = _unaligned(lone_a, words_a, words_b, WORD_ALIGNMENT, part.a.names, NAME_ALIGNMENT)
        lone_b = _unaligned(lone_b, words_b, words_a, WORD_ALIGNMENT, part.b.names, NAME_ALIGNMENT)
    values = dict(part.values)
    values["unaligned_min"] = float(np.log1p(min(len(lone_a), len(lone_b))))
    values["unaligned_max"] = float(np.log1p(max(len(lone_a), len(lone_b))))
    values["unaligned_names"] = float(
        sum(w in part.a.names for w in lone_a) + sum(w in part.b.names for w in lone_b)
    )
    values["swap"] = float(bool(lone_a and lone_b))
    return np.array([values[name] for name in FEATURES], dtype=np.float64)


def features_matrix(parts: Sequence[TextPart], words: dict[str, WordVectors]) -> np.ndarray:
    """Feature rows of many pairs, given the word vectors of every text some pair needs."""
    rows = []
    for p in parts:
        wa = words.get(p.query) if p.needs_words else None
        wb = words.get(p.candidate) if p.needs_words else None
        rows.append(finish(p, wa, wb))
    return np.vstack(rows) if rows else np.empty((0, len(FEATURES)))


def embedding_features(query_vector: np.ndarray, candidate_vector: np.ndarray) -> np.ndarray:
    """u*v then |u-v| of two embeddings (one pair, or rows of two matrices): symmetric in the
    two prompts, so it does not matter which one was stored."""
    u = np.asarray(query_vector, dtype=np.float64)
    v = np.asarray(candidate_vector, dtype=np.float64)
    return np.concatenate([u * v, np.abs(u - v)], axis=-1)


def model_rows(
    text_rows: np.ndarray, query_vectors: np.ndarray | None, candidate_vectors: np.ndarray | None
) -> np.ndarray:
    """What a model reads: the text features (rows of :func:`finish`), followed by
    :func:`embedding_features` when the vectors are given (the model's ``embedding_dim`` > 0)."""
    if query_vectors is None or candidate_vectors is None:
        return text_rows
    return np.hstack([text_rows, embedding_features(query_vectors, candidate_vectors)])
