"""The content guard: a name in one prompt only, or a word on each side with no counterpart.

A word counts as matched by stem, or by the embedding model's own contextual word vectors
(computed on the embedding worker, batched, only when the text alone cannot decide).
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections import OrderedDict
from collections.abc import Collection, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from extproc.cache.guards.base import LONG_PROMPT_CHARS
from extproc.cache.guards.lexical import (
    CALENDAR_WORDS,
    NEGATIONS,
    NUMBER_WORDS,
    STOPWORDS,
    Analysis,
    analyze,
    numeronym_of,
)
from extproc.cache.guards.scripts import readable

if TYPE_CHECKING:
    from extproc.embedding.base import WordVectors
    from extproc.embedding.batcher import Embedder

_SKIP = STOPWORDS | NEGATIONS | NUMBER_WORDS | CALENDAR_WORDS


def missing_words(a: Analysis, b: Analysis) -> list[str]:
    """Content words of ``a`` that ``b`` does not contain (same stem, a compound, an abbreviation)."""
    have, whole = set(b.stems), set(b.words)
    spelled_out = _acronym_spans(a.words, b.words)
    out: list[str] = []
    for k, (word, stem) in enumerate(zip(a.words, a.stems, strict=True)):
        if word in _SKIP or not word.isalpha() or len(word) < 2 or stem in have or word in out:
            continue
        if len(stem) >= 4 and (word in b.joined_pairs or any(w.startswith(stem) for w in b.words)):
            continue  # "wifi" against "wi-fi", "dict" against "dictionaries"
        if (k + 1 < len(a.words) and word + a.words[k + 1] in whole) or (
            k and a.words[k - 1] + word in whole
        ):
            continue  # "wi", "fi" against "wifi"
        if k in spelled_out or _acronym_spans(b.words, (word,)):
            continue  # "new york city" against "nyc", and "nyc" against "new york city"
        if any(numeronym_of(short, word) for short in b.numeronyms):
            continue  # "kubernetes" against "k8s" (whose letters, k and s, are never missing)
        out.append(word)
    return out


def _acronym_spans(words: Sequence[str], others: Sequence[str]) -> set[int]:
    """Indices of ``words`` in a run of 2-6 whose initials spell one of ``others`` ("nyc").

    A function word is no acronym ("in Shasta" does not spell "is"), and the run must start and
    end on content words ("machine learning" spells "ml", "is a" spells nothing): without both,
    any two neighbouring words would excuse each other.
    """
    initials = _initials(tuple(words))
    covered: set[int] = set()
    for short in {w for w in others if 2 <= len(w) <= 6 and w.isalpha() and w not in _SKIP}:
        i = initials.find(short)
        while i >= 0:
            end = i + len(short) - 1
            if words[i] not in STOPWORDS and words[end] not in STOPWORDS:
                covered.update(range(i, end + 1))
            i = initials.find(short, i + 1)
    return covered


@lru_cache(maxsize=8192)
def _initials(words: tuple[str, ...]) -> str:
    """The first letter of each word, one character per word (the verifier asks per pair and
    per word: the same prompt's initials are worked out once)."""
    return "".join(w[:1] or "\0" for w in words)


def modifiers(a: Analysis, b: Analysis, words: Sequence[str]) -> list[str]:
    """Those of ``words`` that modify a word both prompts have ("vegan" in "vegan cake" vs "cake")."""
    have = set(b.stems)
    out = []
    for k in range(len(a.words) - 1):
        word, head = a.words[k], a.words[k + 1]
        shared = head not in words and head.isalpha() and head not in STOPWORDS and a.stems[k + 1] in have
        if word in words and shared:
            out.append(word)
    return out


def _fold(word: str) -> str:
    """Lower case without accents, as uncased BERT tokenizers see a word."""
    return "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))


def _unaligned(
    words: Sequence[str],
    own: WordVectors,
    other: WordVectors,
    min_alignment: float,
    names: Collection[str] = (),
    name_alignment: float = 0.0,
) -> list[str]:
    """Those of ``words`` with no counterpart in ``other`` at cosine ``min_alignment`` or more
    (``name_alignment`` or more for the words in ``names``)."""
    index = {w: i for i, w in enumerate(own.words)}
    out = []
    for word in words:
        i = index.get(_fold(word))
        if i is None:  # split differently by the model's tokenizer: look for a piece of it
            i = next((k for k, w in enumerate(own.words) if w and w in _fold(word)), None)
        if (
            i is None
            or len(other.words) == 0
            or float(np.max(other.vectors @ own.vectors[i]))
            < (max(min_alignment, name_alignment) if word in names else min_alignment)
        ):
            out.append(word)
    return out


class WordVectorCache:
    """Word vectors of recent prompts, computed once per prompt even when asked concurrently
    (shared by the content guard and the learned verifier)."""

    def __init__(self, embedder: Embedder, size: int = 2048) -> None:
        self.embedder = embedder
        self._cache: OrderedDict[str, WordVectors] = OrderedDict()
        self._pending: dict[str, asyncio.Future[WordVectors]] = {}
        self._size = size

    async def get(self, text: str) -> WordVectors:
        """The word vectors of ``text`` (from the model on the embedding worker, or cached)."""
        cached = self._cache.get(text)
        if cached is not None:
            self._cache.move_to_end(text)
            return cached
        pending = self._pending.get(text)
        if pending is not None:  # the same prompt checked against several candidates at once
            return await asyncio.shield(pending)
        task = asyncio.ensure_future(self.embedder.embed_words(text))
        self._pending[text] = task
        # Kept when it finishes even if every waiter gave up meanwhile (a lookup past its
        # deadline): the pass ran anyway, and the next lookup meeting this prompt is spared it.
        task.add_done_callback(lambda done: self._settle(text, done))
        return await asyncio.shield(task)

    def _settle(self, text: str, task: asyncio.Future[WordVectors]) -> None:
        self._pending.pop(text, None)
        if task.cancelled() or task.exception() is not None:
            return
        self._cache[text] = task.result()
        self._cache.move_to_end(text)
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)


class ContentGuard:
    """Rejects a name, thing or modifier that one prompt has and the other lacks.

    Three kinds of difference that the embedding barely notices:

    - ``names``: a name (capitalized mid-sentence, an acronym, iPhone) in one prompt only:
      "Austria" vs "Australia", "UMass, Boston" vs "UMass";
    - ``swaps``: a word on each side with no counterpart on the other: "soccer team" vs
      "basketball team";
    - ``modifiers`` (off by default: on Quora pairs it costs more paraphrases than it saves):
      a word that modifies a word both share: "vegan cake" vs "cake".

    A word has a counterpart when the other prompt has its stem, or a word whose contextual
    vector from the embedding model aligns with it at ``min_alignment`` or more (synonyms such as
    fix / repair align at 0.8+, different names of the same kind much lower); a name needs
    ``name_alignment`` (names of one kind, Europe / America, Washington / California, align at
    0.5-0.7, while a name and its abbreviation or inflection align above 0.8).  Other added detail
    ("... in economics") is left alone: paraphrases add such detail all the time.  Word vectors
    are computed only when the text alone cannot decide; without them (``embedder`` None or a
    model without word vectors) stems alone decide.
    """

    name = "content"

    def __init__(
        self,
        embedder: Embedder | None = None,
        min_alignment: float = 0.5,
        swaps: bool = True,
        modifiers: bool = False,
        cache_size: int = 2048,
        name_alignment: float = 0.7,
        words: WordVectorCache | None = None,
    ) -> None:
        self.embedder = embedder if embedder is not None and embedder.has_words else None
        self.min_alignment = min_alignment
        self.name_alignment = name_alignment
        self.swaps = swaps
        self.modifiers = modifiers
        self.words = (
            words
            if words is not None
            else (WordVectorCache(self.embedder, cache_size) if self.embedder is not None else None)
        )
        self.model_calls = 0
        """Lookups that needed word vectors (the rest were decided on the text alone)."""

    def _decides(self, a: Analysis, b: Analysis, lone_a: list[str], lone_b: list[str]) -> bool:
        """True when the words without counterpart make the prompts ask different things."""
        if any(w in a.names for w in lone_a) or any(w in b.names for w in lone_b):
            return True
        if self.swaps and lone_a and lone_b:
            return True
        return self.modifiers and bool(modifiers(a, b, lone_a) or modifiers(b, a, lone_b))

    def _suspects(self, query: str, candidate: str) -> tuple[Analysis, Analysis, list[str], list[str]] | None:
        """The analyses and missing words of both prompts, or None when nothing could reject."""
        a, b = analyze(query), analyze(candidate)
        # Only words it can read: a run of Chinese is one "word" and differs in every paraphrase.
        missing_a = [w for w in missing_words(a, b) if readable(w)]
        missing_b = [w for w in missing_words(b, a) if readable(w)]
        if not self._decides(a, b, missing_a, missing_b):
            return None
        return a, b, missing_a, missing_b

    async def reject(self, query: str, candidate: str) -> bool:
        """True for a name, swap or modifier that no word of the other prompt matches."""
        if len(query) + len(candidate) > LONG_PROMPT_CHARS:  # ~1 ms per KB: off the event loop
            found = await asyncio.to_thread(self._suspects, query, candidate)
        else:
            found = self._suspects(query, candidate)
        if found is None:
            return False  # nothing that could reject: no model call
        if self.words is None:
            return True
        a, b, missing_a, missing_b = found
        self.model_calls += 1
        words_a, words_b = await asyncio.gather(self.words.get(query), self.words.get(candidate))
        lone_a = _unaligned(missing_a, words_a, words_b, self.min_alignment, a.names, self.name_alignment)
        lone_b = _unaligned(missing_b, words_b, words_a, self.min_alignment, b.names, self.name_alignment)
        return self._decides(a, b, lone_a, lone_b)
