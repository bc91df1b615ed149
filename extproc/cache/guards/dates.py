"""Dates relative to now: "today" is not "tomorrow", "this year" is not "last year".

The numbers guard compares absolute dates (years, weekdays, months); a date said relative to
the day the prompt is asked is a number too, one the embedding barely sees ("tax brackets for
this year" / "for last year" are 0.95 apart with all-MiniLM-L6-v2). Each relative date reads as
a unit and an offset: "tomorrow" is (day, +1), "last summer" (summer, −1), "in the past week"
(week, −1). Two prompts differ in date only when *each* names one the other does not: a date on
one side only ("the best language to learn today" / "the best language to learn") is too often
the same question on Quora (123 of 422 such qqp-dev pairs are labelled duplicates), and "die
tomorrow … finish today" / "die tomorrow" names nothing new on the shorter side.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

_OFFSETS = {"this": 0, "next": 1, "coming": 1, "upcoming": 1, "last": -1, "past": -1, "previous": -1}
_DEICTIC = {"today": ("day", 0), "tonight": ("day", 0), "tomorrow": ("day", 1), "yesterday": ("day", -1)}
# Parts of a day are that day: "this morning" is today, "last night" yesterday.
_PARTS_OF_DAY = frozenset(("morning", "afternoon", "evening", "night"))
_DAYS = _PARTS_OF_DAY | {"day"}
_UNITS = (
    "day|week|weekend|month|quarter|year|season|semester|decade|century|morning|afternoon|evening|"
    "night|summer|winter|spring|fall|autumn|monday|tuesday|wednesday|thursday|friday|saturday|sunday"
)
_RELATIVE = re.compile(
    rf"\b(?P<offset>this|next|coming|upcoming|last|past|previous)\s+(?P<unit>{_UNITS})s?\b(?!\s+of\b)"
    r"|\b(?P<deictic>today|tonight|tomorrow|yesterday)(?:'s|’s)?\b",
    re.IGNORECASE,
)
# Words before "last day" / "next year" that make it a story's, not the calendar's: "my last day
# at work", "a next year"; after "the" only a day is ("the next day", but "in the past week").
_NOT_CALENDAR = frozenset(["a", "an", "my", "your", "his", "her", "our", "their", "its"])
TODAY_AS_ERA = re.compile(
    r"\b(?:in|of|world|society|people|alive|exist|exists|even|still|relevant|useful)\s+today\b(?!['’]s)|"
    r"\btoday(?:'s|’s)\s+(?:world|society|generation|youth|kids|children|parents|era|age|times|"
    r"culture|economy|education)\b",
    re.IGNORECASE,
)
""""today" as "nowadays": the era, not the date ("in today's world", "still alive today"); also
what the time-sensitive prompt check (:mod:`extproc.cache.volatile`) leaves out. "In today's
game" is the date: "today's" is the era only before one of the nouns listed."""


@lru_cache(maxsize=8192)
def relative_dates(text: str) -> Counter[tuple[str, int]]:
    """Each date ``text`` names relative to now, as (unit, offset): "next Monday" → (monday, 1)."""
    text = TODAY_AS_ERA.sub(" ", text)
    found: Counter[tuple[str, int]] = Counter()
    for match in _RELATIVE.finditer(text):
        if match.group("deictic"):
            found[_DEICTIC[match.group("deictic").lower()]] += 1
            continue
        unit = match.group("unit").lower()
        before = text[: match.start()].split()[-1:]
        if before and (before[0].lower() in _NOT_CALENDAR or (before[0].lower() == "the" and unit in _DAYS)):
            continue
        found["day" if unit in _PARTS_OF_DAY else unit, _OFFSETS[match.group("offset").lower()]] += 1
    return found


def dates_differ(query: str, candidate: str) -> bool:
    """True when each prompt names a relative date the other does not ("this year" / "last year")."""
    a, b = relative_dates(query), relative_dates(candidate)
    return bool(a - b) and bool(b - a)
