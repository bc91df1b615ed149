"""Rule guards: cheap text checks that veto look-alike candidates (no model, microseconds).

Each guard compares the query with a candidate prompt and rejects when they differ in a way
that changes the answer while leaving the embedding almost unchanged: a different number,
unit or date, a negation on one side only, or an opposite action. Dates relative to now
("tomorrow", "last year") are read in :mod:`extproc.cache.guards.dates`, the swapped-direction
guard is in :mod:`extproc.cache.guards.direction`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from functools import lru_cache
from types import MappingProxyType

from extproc.cache.guards.dates import dates_differ
from extproc.cache.guards.lexical import (
    HALF,
    NEGATIONS,
    STOPWORDS,
    Analysis,
    analyze,
    normalize_number,
    numeronym_of,
    stem,
    word_list,
)
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
hot warm heat | cold cool
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
next upcoming | previous last latest recent recently
successor | predecessor
future | past
earliest | latest
near nearest closest | far farther farthest further furthest
eat | avoid
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
        """True when the multisets of numbers (and weekday / month names) differ, read with and
        without "half" as 0.5: "half a cup" is "1/2 cup", yet "in half a year" is not a number
        the other prompt must repeat (prose says "half" loosely); or when each names a date
        relative to now that the other does not ("this year" / "last year")."""
        if dates_differ(query, candidate):
            return True
        a, b = analyze(query), analyze(candidate)
        if a.numbers == b.numbers:
            return False
        numbers_a, numbers_b = _spelled_numeronyms(a, b), _spelled_numeronyms(b, a)
        if numbers_a == numbers_b:
            return False  # "k8s" against "kubernetes": the 8 counts letters, not things
        halves_a, halves_b = a.words.count("half"), b.words.count("half")
        if not (halves_a or halves_b):
            return True
        return numbers_a + Counter({HALF: halves_a}) != numbers_b + Counter({HALF: halves_b})


def _spelled_numeronyms(a: Analysis, b: Analysis) -> Counter[str]:
    """``a``'s numbers without those of numeronyms ``b`` spells out ("k8s" when b says "kubernetes")."""
    numbers = Counter(a.numbers)
    for short in a.numeronyms:
        if any(numeronym_of(short, word) for word in b.words):
            numbers[normalize_number(short[1:-1])] -= 1
    return +numbers


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
