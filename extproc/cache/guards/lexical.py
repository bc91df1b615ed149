"""Lexical analysis of a prompt for the guards: words, stems, numbers, units, dates, negation.

Pure functions over text, no model.  Every rule here is a general property of English
questions (how numbers, units, negation and inflection are written), not a list fitted to
a data set.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

from extproc.cache.guards.numerals import fractions, one_spelling, roman_numerals
from extproc.cache.guards.scripts import ascii_numbers


def word_list(text: str) -> list[str]:
    """The words of a space-separated list."""
    return text.split()


_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'"})
_CONTRACTIONS = [
    (re.compile(r"\bcan't\b|\bcannot\b"), "can not"),
    (re.compile(r"\bwon't\b"), "will not"),
    (re.compile(r"\bshan't\b"), "shall not"),
    (re.compile(r"\bain't\b"), "is not"),
    (re.compile(r"n't\b"), " not"),
    (re.compile(r"'(?:s|re|ve|ll|d|m)\b"), ""),
]
# A number (1,000 / 3.5 / 1990) glued to an optional suffix (k, th, cm, s), a word, or a symbol
# that stands for a word.  Codes split into both: "iphone6" is iphone + 6, "s04e02" is s 4 e 2.
_TOKEN = re.compile(
    r"(?P<num>\d+(?:[.,]\d+)*)(?P<suffix>[^\W\d_]+)?"
    r"|(?P<word>[^\W\d_]+)"
    r"|(?P<sym>[%$€£°→])|(?P<arrow>->)"
)
_SYMBOL_WORDS = {"%": "percent", "$": "dollar", "€": "euro", "£": "pound", "°": "degree", "→": "to"}

_UNITS: dict[str, str] = {}
for _canon, _forms in {
    "mm": "mm millimeter millimeters millimetre millimetres",
    "cm": "cm centimeter centimeters centimetre centimetres",
    "m": "meter meters metre metres",
    "km": "km kms kilometer kilometers kilometre kilometres",
    "inch": "inch inches",
    "foot": "foot feet ft",
    "yard": "yard yards yd yds",
    "mile": "mile miles mi",
    "mg": "mg milligram milligrams",
    "g": "gram grams gm gms",
    "kg": "kg kgs kilo kilos kilogram kilograms",
    "lb": "lb lbs pound pounds",
    "oz": "oz ounce ounces",
    "ton": "ton tons tonne tonnes",
    "stone": "stone stones",
    "ml": "ml milliliter milliliters millilitre millilitres",
    "l": "liter liters litre litres ltr",
    "gallon": "gallon gallons gal",
    "cup": "cup cups",
    "tbsp": "tablespoon tablespoons tbsp tbs",
    "tsp": "teaspoon teaspoons tsp",
    "pint": "pint pints",
    "quart": "quart quarts qt",
    "celsius": "celsius centigrade",
    "fahrenheit": "fahrenheit",
    "kelvin": "kelvin",
    "minute": "minute minutes mins",
    "hour": "hour hours hr hrs",
    "day": "day days",
    "week": "week weeks wk wks",
    "month": "month months",
    "year": "year years yr yrs",
    "decade": "decade decades",
    "century": "century centuries",
    "kb": "kb kilobyte kilobytes",
    "mb": "mb megabyte megabytes",
    "gb": "gb gigabyte gigabytes",
    "tb": "tb terabyte terabytes",
    "mph": "mph",
    "kph": "kph kmh",
    "dollar": "dollar dollars usd bucks",
    "euro": "euro euros eur",
    "rupee": "rupee rupees inr rs",
    "yen": "yen jpy",
    "watt": "watt watts kw kwh",
    "volt": "volt volts",
    "mah": "mah",
    "hz": "hz khz mhz ghz",
    "acre": "acre acres hectare hectares",
}.items():
    for _form in _forms.split():
        _UNITS[_form] = _canon
UNIT_WORDS = frozenset(_UNITS)
"""Names and abbreviations of units of measure and currencies."""
# Letters that are a unit only when glued to or right after a number ("5 g", "10l", "30c").
_NUMBER_UNITS = {"g": "g", "l": "l", "m": "m", "c": "celsius", "f": "fahrenheit", "w": "watt"}

_CARDINALS = {
    w: i
    for i, w in enumerate(
        word_list(
            "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
            "fifteen sixteen seventeen eighteen nineteen"
        )
    )
}
_CARDINALS |= {
    w: 10 * i for i, w in enumerate(word_list("twenty thirty forty fifty sixty seventy eighty ninety"), 2)
}
_CARDINALS["dozen"] = 12
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000, "k": 1000}
_ORDINALS = {
    w: i
    for i, w in enumerate(
        word_list("third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth"), 3
    )
}
_ORDINAL_SUFFIXES = {"st", "nd", "rd", "th"}
# "first" / "second" are too often not ordinals ("first time", "a second"); they are handled
# as the opposites first/last.  Weekdays and months are compared like numbers.
_CALENDAR = {
    **{d: d for d in word_list("monday tuesday wednesday thursday friday saturday sunday")},
    **{
        m: m[:3]
        for m in word_list("january february april june july august september october november december")
    },
    **{a: a[:3] for a in word_list("jan feb apr jun jul aug sep oct nov dec")},
    "sept": "sep",
}
_CAPITALIZED_MONTHS = {"May": "may", "March": "mar"}  # lower-case they are a verb
# "US" / "U.S." in capitals is the country, not the pronoun "us" (a stopword every rule skips):
# "send money from the US to India" is not "from India to the US". Text in capitals throughout
# ("TELL US") keeps the pronoun.
_COUNTRY_US = re.compile(r"\bU\.S\.(?:A\.)?|\bUS\b")
NUMBER_WORDS = frozenset(_CARDINALS) | frozenset(_SCALES) | frozenset(_ORDINALS)
"""Words the numbers guard reads as numbers (other guards leave them to it)."""
CALENDAR_WORDS = frozenset(_CALENDAR)

NEGATIONS = frozenset(
    word_list("not no never without none nothing nobody nowhere neither nor unable lack lacks lacking")
)

STOPWORDS = frozenset(
    word_list(
        """a an the this that these those there here it its it's i me my mine myself we us our ours you your
    yours he him his she her hers they them their theirs one ones someone somebody something anyone
    anybody anything everyone everybody everything who whom whose what which when where why how whether
    whatever whoever whenever wherever is are was were be been being am do does did doing done have has
    had having can could would should will shall may might must ought to of in on at by for from with
    about as into onto over under up down out off than then so if or and but nor yet also too very just
    only even still really actually ever some any all each every both either few many much more most
    other others such own same there's let lets get gets got getting make makes made making go goes
    going went gone possible ok okay please thing things way ways yes"""
    )
)


def normalize_number(text: str) -> str:
    """Canonical form of a written number: "1,000" -> "1000", "3.50" -> "3.5", "2,5" -> "2.5"."""
    if "," in text:
        groups = text.split(",")
        if all(len(g) == 3 for g in groups[1:]):
            text = "".join(groups)
        elif len(groups) == 2 and "." not in text:
            text = ".".join(groups)
        else:
            text = text.replace(",", "")
    if "." in text:
        head, _, tail = text.partition(".")
        tail = tail.rstrip("0")
        text = f"{head}.{tail}" if tail else head
    return text.lstrip("0") or "0"


def stem(word: str) -> str:
    """A light suffix stripper so inflections compare equal ("increasing" ~ "increases")."""
    w = word
    if not w.isalpha():
        return w
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith("ied"):
        return w[:-3] + "y"
    for suffix in ("ing", "est", "ed", "es", "s", "e"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and not w.endswith("ss"):
            w = w[: -len(suffix)]
            break
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiouls":
        w = w[:-1]  # stopped -> stopp -> stop
    if w.endswith("e") and len(w) > 3:
        w = w[:-1]
    return w


@dataclass(frozen=True)
class Analysis:
    """What the guards need to know about one prompt."""

    words: tuple[str, ...]
    """Lower-case word tokens in order, contractions expanded, symbols as words."""
    stems: tuple[str, ...]
    numbers: Counter[str]
    """Numbers (also inside codes such as ww2 or iphone6), ordinals and weekday / month names;
    the number 1 is left out because "a", "an" and "one" say it in words."""
    units: frozenset[str]
    negated: bool
    joined_pairs: frozenset[str]
    """Each two neighbouring words written as one (finds "wifi" in "wi-fi", "login" in "log in")."""
    numeronyms: tuple[str, ...] = ()
    """Codes that may abbreviate a word: "k8s" (kubernetes), "i18n"; their number is in ``numbers``."""
    names: frozenset[str] = frozenset()
    """Lower-cased names: words capitalized mid-sentence (Austria, Python), acronyms (NASA) and
    words with inner capitals (iPhone, PayPal).  Empty for text in Title Case or all capitals."""


HALF = normalize_number("0.5")
"""How 1/2 and "half" read as a number."""


# A numeronym: first letter, how many letters left out, last letter ("k8s" = kubernetes, "i18n",
# "a11y"). Read as a code (k, 8, s) like any other; only a word the other prompt spells out in
# full makes it that word (see :func:`numeronym_of`), so "m4a" or "p90x" stay codes.
_NUMERONYM = re.compile(r"\b[^\W\d_]\d{1,2}[^\W\d_]\b")


def numeronym_of(short: str, word: str) -> bool:
    """True when ``short`` abbreviates ``word`` by counting its inner letters ("k8s", "kubernetes")."""
    return len(word) == int(short[1:-1]) + 2 and word[0] == short[0] and word[-1] == short[-1]


def _parse_number_words(words: list[str], i: int) -> tuple[int | None, int]:
    """Parse "two hundred fifty" starting at ``i``; return (value or None, tokens used)."""
    total, current, j = 0, None, i
    while j < len(words):
        w = words[j]
        if w in _CARDINALS:
            current = (current or 0) + _CARDINALS[w]
        elif w in _SCALES and w != "k" and current is not None:
            current *= _SCALES[w]
            if _SCALES[w] >= 1000:
                total, current = total + current, None
        elif w == "and" and current is not None and j + 1 < len(words) and words[j + 1] in _CARDINALS:
            pass
        else:
            break
        j += 1
    if j == i:
        return None, 0
    return total + (current or 0), j - i


@lru_cache(maxsize=8192)
def analyze(text: str) -> Analysis:
    """Tokenize and annotate ``text`` (cached: the same prompt is analysed once)."""
    capital_calendar = [v for k, v in _CAPITALIZED_MONTHS.items() if re.search(rf"\b{k}\b", text)]
    if any(c.islower() for c in text):
        text = _COUNTRY_US.sub("USA", text)
        text = roman_numerals(text)
    lowered = one_spelling(ascii_numbers(text).translate(_APOSTROPHES).lower())
    for pattern, repl in _CONTRACTIONS:
        lowered = pattern.sub(repl, lowered)
    words: list[str] = []
    numbers: Counter[str] = Counter(capital_calendar)
    units: set[str] = set()
    after_number = False
    for match in _TOKEN.finditer(lowered):
        kind = match.lastgroup
        if match.group("num") is not None:
            value = normalize_number(match.group("num"))
            suffix = match.group("suffix") or ""
            if suffix == "k":
                value = normalize_number(str(float(value) * 1000))
            if value != "1":
                numbers[value] += 1
            words.append(value)
            unit = _UNITS.get(suffix) or _NUMBER_UNITS.get(suffix)
            if unit:
                units.add(unit)
                words.append(suffix)
            elif suffix and suffix not in _ORDINAL_SUFFIXES and suffix not in ("k", "s"):
                words.append(suffix)  # a code such as 4g or 3d: the letters are a word
            after_number = True
            continue
        token = match.group(kind) if kind else match.group(0)
        if kind in ("sym", "arrow"):
            token = "to" if kind == "arrow" else _SYMBOL_WORDS[token]
            if token in ("dollar", "euro", "pound"):
                units.add(_UNITS.get(token, token))
            elif token == "percent":
                numbers["%"] += 1
            words.append(token)
            continue
        if after_number and token in _NUMBER_UNITS:
            units.add(_NUMBER_UNITS[token])
        elif token in _UNITS:
            units.add(_UNITS[token])
        if token in _CALENDAR:
            numbers[_CALENDAR[token]] += 1
        elif token in _ORDINALS:
            numbers[str(_ORDINALS[token])] += 1
        elif token in ("percent", "percentage"):
            numbers["%"] += 1
        words.append(token)
        after_number = False
    for k, word in enumerate(words[:-1]):
        after = words[k + 1]
        if word == "second" and (
            (k > 0 and words[k - 1] == "the")
            or after in ("most", "best", "worst", "least")
            or (after.endswith("est") and len(after) > 4)
        ):
            # "the second longest river" is not "the longest river", "the second person on the
            # moon" not "the first" (1 is never counted: "a" and "one" say it)
            numbers["2"] += 1
    i = 0
    while i < len(words):
        value, used = _parse_number_words(words, i)
        if used:
            if value != 1:
                numbers[str(value)] += 1
            i += used
        else:
            i += 1
    negated = any(w in NEGATIONS and not (k > 0 and words[k - 1] == "or") for k, w in enumerate(words))
    return Analysis(
        words=tuple(words),
        stems=tuple(stem(w) for w in words),
        numbers=numbers,
        units=frozenset(units),
        negated=negated,
        joined_pairs=frozenset(x + y for x, y in pairwise(words)),
        numeronyms=tuple(_NUMERONYM.findall(lowered)),
        names=frozenset(_names(text)),
    )


_QUIET_MARKS = frozenset(".,?!'\"’‘`:;%$€£°")
"""Marks that change nothing a question asks (or that the words already say: % is "percent")."""


@lru_cache(maxsize=8192)
def canonical(text: str) -> tuple[str, ...]:
    """The words of ``text`` with each way of writing one number, unit or symbol made one
    ("15%", "15 percent" and "fifteen percent" all read 15 percent): two prompts with the same
    canonical words ask the same thing, however they spell it."""
    words = list(analyze(text).words)
    # Symbols the words drop still say something ("C++" is not "C", "=" not "=="): kept in order.
    bare = fractions(text)  # the slash of "1/2" says "half"
    out: list[str] = [ch for ch in bare if not (ch.isalnum() or ch.isspace() or ch in _QUIET_MARKS)]
    i = 0
    while i < len(words):
        value, used = _parse_number_words(words, i)
        if used:
            out.append(str(value))
            i += used
            continue
        word = words[i]
        if word == "half":
            out.append(HALF)
            i += 1
            continue
        # "pound" is a weight or a currency: kept as written, never made "lb".
        out.append("percent" if word == "percentage" else word if word == "pound" else _UNITS.get(word, word))
        i += 1
    return tuple(out)


_SENTENCE_ENDS = frozenset('.!?:;"(\n')
_LETTERS = re.compile(r"[^\W\d_]+")


def _names(text: str) -> set[str]:
    """Words written as names; none when capitals carry no information (Title Case, shouting)."""
    found = list(_LETTERS.finditer(text))
    capitalized = sum(m.group(0)[0].isupper() for m in found)
    if len(found) >= 4 and capitalized * 2 > len(found):
        return set()
    out: set[str] = set()
    for match in found:
        word = match.group(0)
        if word == "I" or not any(c.isupper() for c in word):
            continue
        inner = any(c.isupper() for c in word[1:])  # NASA, iPhone, PayPal
        before = text[max(0, match.start() - 8) : match.start()].rstrip(" \t")
        if inner or (before and before[-1] not in _SENTENCE_ENDS):
            out.add(word.lower())
    return out
