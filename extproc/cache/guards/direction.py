"""The direction guard: "A to B" against "B to A", and two runs of words trading places.

"10 miles to km" is not "10 km to miles", "X faster than Y" not "Y faster than X", and "time in
Tokyo when it is 9am in London" not the reverse: the same words in other roles, which the
embedding barely tells apart (cosine 0.99).
"""

from __future__ import annotations

from functools import lru_cache

from extproc.cache.guards.lexical import STOPWORDS, UNIT_WORDS, analyze, stem, word_list

# Markers of a direction or comparison, and how many content words on each side they bind.
# "in" counts only between units ("cups in a liter" vs "liters in a cup").
_DIRECTION_MARKERS = {"to": "to", "into": "to", "from": "from", "than": "than", "in": "in"}
_WINDOW = {"to": 2, "from": 2, "than": 3, "in": 3}
_UNIT_STEMS = frozenset(stem(u) for u in UNIT_WORDS)


@lru_cache(maxsize=8192)
def _direction_sides(words: tuple[str, ...]) -> tuple[tuple[str, frozenset[str], frozenset[str]], ...]:
    """(marker, content stems before it, content stems after it) for each direction marker
    (cached per prompt, like :func:`_opposite_marks`)."""
    out = []
    for i, word in enumerate(words):
        marker = _DIRECTION_MARKERS.get(word)
        if marker is None:
            continue
        window = _WINDOW[marker]
        left: set[str] = set()
        j = i - 1
        while j >= 0 and len(left) < window and words[j] not in _DIRECTION_MARKERS:
            if words[j] not in STOPWORDS and not words[j][0].isdigit():
                left.add(stem(words[j]))
            j -= 1
        right: set[str] = set()
        j = i + 1
        while j < len(words) and len(right) < window and words[j] not in _DIRECTION_MARKERS:
            if words[j] not in STOPWORDS and not words[j][0].isdigit():
                right.add(stem(words[j]))
            j += 1
        out.append((marker, frozenset(left), frozenset(right)))
    return tuple(out)


# Words that make a relation symmetric: "between A and B" = "between B and A", "A vs B".
_SYMMETRIC = frozenset(word_list("and or nor vs versus v between with"))
_ARTICLES = frozenset(("a", "an", "the"))


def _without_articles(words: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """The words but articles, and for each whether an article stood right before it."""
    kept: list[str] = []
    after_article: list[bool] = []
    article = False
    for w in words:
        if w in _ARTICLES:
            article = True
            continue
        kept.append(w)
        after_article.append(article)
        article = False
    return tuple(kept), tuple(after_article)


def _stemmed(words: tuple[str, ...]) -> tuple[str, ...]:
    """Content words by stem: "cats ... dog food" / "dogs ... cat food" trade the same two words."""
    return tuple(w if w in STOPWORDS else stem(w) for w in words)


def _names_something(span: tuple[str, ...]) -> bool:
    return any(w not in STOPWORDS for w in span) and not any(w[0].isdigit() for w in span)


_SPAN = 3
"""Longest run of words that trades places as one ("Los Angeles", "rational numbers")."""


def transposed(words_a: tuple[str, ...], words_b: tuple[str, ...]) -> bool:
    """True when the prompts differ only by two runs of up to three words trading places ("time
    in Tokyo when it is 9am in Los Angeles" / "in Los Angeles ... in Tokyo", "is the set of
    integers a subset of the rational numbers" / the reverse): the same words in other roles.
    Function words alone ("why is X" / "why X is"), numbers (the numbers guard's), runs joined by
    a symmetric connective ("between A and B") and neighbours ("black little bugs") do not count;
    neighbours do when an article separates them in both ("is every square a rectangle"). Articles
    are left out first: they move with their noun ("Americans think of the British" / "the
    British think of Americans"). On qqp-dev 19 of the 22 such pairs are labelled different
    questions; of the other three, "Is India better than Pakistan?" and "Why is the USA better
    than the UK?" against their reverses the "than" rule rejects anyway, and the third swaps two
    World Cup teams (a label we do not follow)."""
    a, gap_a = _without_articles(_stemmed(words_a))
    b, gap_b = _without_articles(_stemmed(words_b))
    if len(a) != len(b) or a == b:
        return False
    start = 0
    while a[start] == b[start]:
        start += 1
    end = len(a)
    while a[end - 1] == b[end - 1]:
        end -= 1
    mid_a, mid_b = a[start:end], b[start:end]
    n = len(mid_a)
    for len_x in range(1, _SPAN + 1):
        for len_y in range(1, min(_SPAN, n - len_x) + 1):
            x, y = mid_a[:len_x], mid_a[n - len_y :]
            between = mid_a[len_x : n - len_y]
            if x == y or mid_b[:len_y] != y or mid_b[n - len_x :] != x or mid_b[len_y : n - len_x] != between:
                continue
            if not (_names_something(x) and _names_something(y)) or not _SYMMETRIC.isdisjoint(between):
                continue
            if between or (gap_a[start + len_x] and gap_b[start + len_y]):
                return True
    return False


class DirectionGuard:
    """Rejects "A to B" against "B to A" (also from / into / than), and any two content words
    trading places: same words, swapped roles."""

    name = "direction"

    def reject(self, query: str, candidate: str) -> bool:
        """True when two words sit on opposite sides of the same marker in the two prompts, or
        trade places."""
        words_a, words_b = analyze(query).words, analyze(candidate).words
        if transposed(words_a, words_b):
            return True
        sides_a = _direction_sides(words_a)
        sides_b = _direction_sides(words_b)
        for marker, left_a, right_a in sides_a:
            for marker_b, left_b, right_b in sides_b:
                if marker != marker_b:
                    continue
                moved_right = (left_a & right_b) - right_a - left_b
                moved_left = (right_a & left_b) - left_a - right_b
                if marker == "in":
                    moved_right &= _UNIT_STEMS
                    moved_left &= _UNIT_STEMS
                if moved_right and moved_left:
                    return True
        return False
