"""Rule guards: cheap text checks that veto look-alike candidates (no model, microseconds).

Each guard compares the query with a candidate prompt and rejects when they differ in a way
that changes the answer while leaving the embedding almost unchanged: a different number,
unit or date, a negation on one side only, an opposite action, or a swapped direction.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType

from extproc.cache.guards.lexical import NEGATIONS, STOPWORDS, UNIT_WORDS, Analysis, analyze, stem, word_list
from extproc.cache.guards.scripts import cjk_negations

# Opposite meanings: a word from one side in one prompt and a word from the other side in the
# other prompt (and neither shares the first's side) means the questions ask for opposite things.
# good | bad: Quora labels 6 of the 14 qqp-dev pairs it splits duplicates ("Is stretching good
# for you?" / "Is stretching bad?": one discussion), but a cached "Yes." answers the other wrongly.
_OPPOSITES = """
on | off
enable enabled enabling | disable disabled disabling
activate | deactivate
turn_on switch_on | turn_off switch_off
increase raise rise grow more higher greater | decrease reduce lower fall drop shrink less fewer
install | uninstall remove
buy purchase buyer | sell seller
ascending ascend | descending descend
advantage pro benefit strength | disadvantage con drawback weakness
add | remove delete subtract
start begin | stop end finish
open | close shut
lock | unlock
upload | download
import | export
encrypt | decrypt
encode | decode
compress zip | decompress unzip extract
minimum min minimize | maximum max maximize
high | low
highest | lowest
most | least
best | worst
better | worse
before | after
first | last
rich | poor
hot warm | cold cool
up | down
in | out
upper | lower
uppercase | lowercase
inside | outside
above | below
north | south
east | west
left | right
top | bottom
forward | backward
next | previous
push | pull
send sender | receive receiver
borrow | lend
win won winner gain | lose lost loser loss
profit | loss
accept | reject decline
allow permit | deny block forbid ban
show unhide | hide
hire | fire
love | hate
like | dislike
agree | disagree
legal | illegal
possible | impossible
safe | unsafe dangerous
healthy | unhealthy
cheap cheapest | expensive
fast faster fastest quick | slow slower slowest
big bigger biggest large larger largest | small smaller smallest little
long longer longest | short shorter shortest
young younger youngest | old older oldest
male man men boy husband boyfriend | female woman women girl wife girlfriend
father dad son brother king | mother mom daughter sister queen
connect | disconnect
mount | unmount
attach | detach
include | exclude
plus | minus
multiply | divide
subscribe | unsubscribe
follow | unfollow
mute | unmute
horizontal horizontally | vertical vertically
success successful succeed | failure fail
pass | fail
internal | external
public | private
online | offline
visible | invisible
positive | negative
true | false
input | output
incoming inbound | outgoing outbound
arrive arrival | depart departure leave
enter entry | exit
login signin | logout signout
heavy | light
thick | thin
wet | dry
full | empty
strong stronger strongest | weak weaker weakest
hard difficult | easy simple
early | late
asleep | awake
alive | dead
day | night
morning | evening
summer | winter
spring | autumn fall
sunrise | sunset
teacher | student
employer | employee
landlord | tenant
parent | child
manual | automatic
offense offensive attack | defense defensive defend
soft | hard
good | bad
loud | quiet
wide | narrow
deep | shallow
dark | light bright
clean | dirty
tight | loose
smooth | rough
inner | outer
interior | exterior
raw uncooked | cooked
fresh | frozen
domestic | international
odd | even
permanent | temporary
mandatory compulsory required | optional
major | minor
senior | junior
ancient | modern
overestimate | underestimate
overweight | underweight
"""


def _opposite_table() -> dict[str, list[tuple[int, int]]]:
    table: dict[str, list[tuple[int, int]]] = {}
    for group, line in enumerate(ln for ln in _OPPOSITES.strip().splitlines() if ln.strip()):
        for side, half in enumerate(line.split("|")):
            for word in half.split():
                table.setdefault(stem(word) if "_" not in word else word, []).append((group, side))
    return table


OPPOSITE_OF = _opposite_table()
# Prefixes that turn a word into its opposite: lock/unlock, like/dislike, activate/deactivate.
_NEGATING_PREFIXES = ("un", "dis", "de", "in", "im", "il", "ir", "non", "anti", "counter")
# Words after which "in" / "out", "on" / "off", "up" / "down" are particles of the verb.
_PARTICLE_VERBS = frozenset(
    word_list(
        "turn switch log sign opt check zoom plug breathe scroll scale speed slow shut power cash "
        "phase roll back tune time ramp fade"
    )
)


@lru_cache(maxsize=8192)
def _opposite_marks(words: tuple[str, ...]) -> Mapping[int, frozenset[int]]:
    """group -> the sides of that opposite pair the prompt uses (cached per prompt: the guard
    and the verifier's features both ask, for every candidate; read-only)."""
    marks: dict[int, set[int]] = {}
    for i, word in enumerate(words):
        prev = words[i - 1] if i else ""
        if word in ("on", "off", "in", "out", "up", "down") and prev not in _PARTICLE_VERBS:
            continue  # plain prepositions ("in Python", "on a Mac") carry no polarity
        key = f"{prev}_{word}" if word in ("on", "off") and prev in ("turn", "switch") else stem(word)
        for group, side in OPPOSITE_OF.get(key, ()):
            marks.setdefault(group, set()).add(side)
    return MappingProxyType({group: frozenset(sides) for group, sides in marks.items()})


class OppositesGuard:
    """Rejects when one prompt asks for an action or quality and the other for its opposite."""

    name = "opposites"

    def reject(self, query: str, candidate: str) -> bool:
        """True when the prompts use opposite sides of an antonym pair, or a negating prefix."""
        a, b = analyze(query), analyze(candidate)
        marks_a, marks_b = _opposite_marks(a.words), _opposite_marks(b.words)
        for group, sides in marks_a.items():
            other = marks_b.get(group)
            if other and len(sides) == 1 and len(other) == 1 and sides != other:
                return True
        return _prefix_opposite(a.words, b.words) or _prefix_opposite(b.words, a.words)


def _prefix_opposite(words_a: tuple[str, ...], words_b: tuple[str, ...]) -> bool:
    """True when ``words_b`` has prefix+w for a word w of ``words_a`` (and not w itself), unless
    ``words_a`` says the same with a separate word: "not refrigerated" for "unrefrigerated",
    "un merge" or "in front" for "unmerge" / "infront"."""
    set_a, set_b = set(words_a), set(words_b)
    for word in set_b - set_a:
        for prefix, base in _negated_bases(word):
            if base in set_a and base not in set_b and not _said_apart(words_a, prefix, base):
                return True
    return False


def _said_apart(words: tuple[str, ...], prefix: str, base: str) -> bool:
    """True when every ``base`` in ``words`` follows a negation or ``prefix`` as its own word."""
    return all(
        i and (words[i - 1] in NEGATIONS or words[i - 1] == prefix) for i, w in enumerate(words) if w == base
    )


@lru_cache(maxsize=32768)
def _negated_bases(word: str) -> tuple[tuple[str, str], ...]:
    """(prefix, word) pairs ``word`` negates by a prefix ("unlock" -> ("un", "lock")), the word at
    least 4 letters long."""
    return tuple(
        (prefix, word[len(prefix) :])
        for prefix in _NEGATING_PREFIXES
        if word.startswith(prefix) and len(word) - len(prefix) >= 4
    )


class NumbersGuard:
    """Rejects when the prompts mention different numbers, years, dates, versions or percentages."""

    name = "numbers"

    def reject(self, query: str, candidate: str) -> bool:
        """True when the multisets of numbers (and weekday / month names) differ."""
        return analyze(query).numbers != analyze(candidate).numbers


class UnitsGuard:
    """Rejects when both prompts name units of measure or currencies and they differ."""

    name = "units"

    def reject(self, query: str, candidate: str) -> bool:
        """True for "5 miles" against "5 km"; a unit on one side only is left to other guards."""
        a, b = analyze(query).units, analyze(candidate).units
        return bool(a and b and a != b)


def _negates_shared(a: Analysis, b: Analysis) -> bool:
    """True when a negation in ``a`` applies to words ``b`` also has ("not safe" vs "safe").

    The scope of a negation is the next two content words; a negation inside a clause the other
    prompt does not have ("... starting from nothing") changes nothing they share.
    """
    have = set(b.stems)
    for k, word in enumerate(a.words):
        if word not in NEGATIONS or (k > 0 and a.words[k - 1] in _TAG_WORDS):
            continue
        scope = [
            s
            for w, s in zip(a.words[k + 1 : k + 5], a.stems[k + 1 : k + 5], strict=True)
            if w not in STOPWORDS
        ]
        if any(s in have for s in scope[:2]):
            return True
    return False


_TAG_WORDS = frozenset({"or", "why", "if"})  # "..., or not?", "why not?", "if not, ..."


class NegationGuard:
    """Rejects when one prompt negates what the other asserts (not, no, never, without, can't...)."""

    name = "negation"

    def reject(self, query: str, candidate: str) -> bool:
        """True when exactly one prompt is negated and the negation covers words both share."""
        if cjk_negations(query) != cjk_negations(candidate):  # no spaces: count the negators
            return True
        a, b = analyze(query), analyze(candidate)
        if a.negated == b.negated:
            return False
        return _negates_shared(a, b) if a.negated else _negates_shared(b, a)


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


def transposed(words_a: tuple[str, ...], words_b: tuple[str, ...]) -> bool:
    """True when the prompts differ only by two content words trading places ("people in Denver
    think of Seattle" / "in Seattle ... of Denver"): the same words in other roles. Neighbours
    ("black little bugs"), function words ("why is X" / "why X is") and words joined by a
    symmetric connective ("between A and B") do not count. Articles are left out first: they
    move with their noun ("Americans think of the British" / "the British think of Americans").
    On qqp-dev 16 of the 18 such pairs are labelled different questions; the other two are "Is
    India better than Pakistan?" and "Why is the USA better than the UK?" against their reverses
    (Quora's label; the "than" rule rejects them anyway)."""
    words_a = tuple(w for w in words_a if w not in _ARTICLES)
    words_b = tuple(w for w in words_b if w not in _ARTICLES)
    if len(words_a) != len(words_b):
        return False
    diff = [i for i, (x, y) in enumerate(zip(words_a, words_b, strict=True)) if x != y]
    if len(diff) != 2:
        return False
    i, j = diff
    return (
        j - i > 1
        and words_a[i] == words_b[j]
        and words_a[j] == words_b[i]
        and words_a[i] not in STOPWORDS
        and words_a[j] not in STOPWORDS
        and _SYMMETRIC.isdisjoint(words_a[i + 1 : j])
    )


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
