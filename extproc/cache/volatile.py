"""Time-sensitive prompts and answers: what must not be cached for an hour like any other.

A question whose answer depends on *when* it is asked ("weather in Paris today", "current price
of gold", "who won last night's game", "what happened 3 days ago") is correct only for a while.
Two signals, both computed from the text, no model:

- the prompt: a time expression relative to now (``today``, ``next Friday``, ``3 days ago``,
  ``this week``, ``right now``…) parsed as a small grammar (a deictic word + a time unit, a
  number + a unit + ``ago``), or a quantity that moves by itself (price, rate, weather, score,
  standings, news…) asked for in the present (``current``, ``latest``, ``live``…, or a price /
  weather question with no date of its own);
- the answer: the model's own text names today's date or says it is dated ("as of my last
  update", "real-time"), whatever the prompt looked like.

Word lists alone fire on "current flow in a resistor" or "now that I graduated"; the grammar
requires the time word to govern a time unit or a moving quantity.  ``bench/volatile_rate.py``
measures how many ordinary questions (QQP) it refuses.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable

from extproc.cache.guards.dates import TODAY_AS_ERA

_SHORT_UNITS = r"(?:second|minute|hour|day|night|week|weekend)s?"
_UNITS = r"(?:second|minute|hour|day|night|week|weekend|fortnight|month|quarter|year|season)s?"
_WEEKDAYS = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_PARTS = r"(?:morning|afternoon|evening|night)"
_NUMBER = r"(?:\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|few|couple of|several)"

_RELATIVE = re.compile(
    "|".join(
        (
            r"\b(?:today|tonight|tomorrow|yesterday)(?:'s)?\b",
            r"\b(?:right now|as of now|as of today|at the moment|at this moment|so far this)\b",
            # "the next day" / "the last day of" tell a story, not the calendar
            rf"(?<!the )(?<!a )\b(?:this|next|last|past|coming)\s+"
            rf"(?:{_UNITS}|{_WEEKDAYS}|{_PARTS})(?:'s)?\b(?! of\b)",
            rf"\b{_NUMBER}\s+{_SHORT_UNITS}\s+(?:ago|from now)\b",
            rf"\b(?:in|within|over|during)\s+the\s+(?:last|past|next|coming)\s+(?:{_NUMBER}\s+)?{_SHORT_UNITS}\b",
        )
    ),
    re.IGNORECASE,
)

# Quantities that change by themselves: asking for their present value is asking for data.
_MOVING = (
    r"(?:price|prices|rate|rates|value|score|scores|weather|forecast|temperature|news|headlines|"
    r"standings|ranking|rankings|odds|results|polls?|traffic|stock|stocks|share price|market cap|"
    r"exchange rate|status|version|release|election results)"
)
_PRESENT = r"(?:current|currently|latest|live|real[- ]time|present|now|newest|recent|ongoing)"
_PRESENT_MOVING = re.compile(
    rf"\b{_PRESENT}\s+(?:\w+\s+){{0,3}}?{_MOVING}\b|\b{_MOVING}\s+(?:\w+\s+){{0,3}}?(?:right\s+)?now\b",
    re.IGNORECASE,
)
# "what is the price of bitcoin", "weather in Paris": the value asked for, with no date of its own.
_QUOTE = re.compile(
    r"\b(?:what(?:'s| is| are)|how much is|how much are|tell me)\s+(?:the\s+)?"
    r"(?:(?:stock|share|spot|gas|gold|oil|bitcoin|btc|eth)\s+)?"
    r"(?:price|exchange rate|weather|temperature|forecast|score)"
    r"\s+(?:of|for|in|at|like)\b",
    re.IGNORECASE,
)
_DATED_YEAR = re.compile(r"\b(?:1[5-9]\d\d|20\d\d)\b")

# The answer says it is dated.
_ANSWER_DATED = re.compile(
    r"\b(?:as of (?:my|the) (?:last|latest|most recent) (?:update|knowledge)|"
    r"i (?:do not|don't|cannot|can't) (?:have|provide|access) "
    r"(?:access to )?(?:real[- ]time|live|current)|"
    r"as of today|at the time of writing)\b",
    re.IGNORECASE,
)


def volatile_prompt(text: str) -> str:
    """Why ``text`` asks about what changes with time (``relative_time``, ``moving_value``), or ""."""
    if _RELATIVE.search(TODAY_AS_ERA.sub(" ", text)):
        return "relative_time"
    if _PRESENT_MOVING.search(text):
        return "moving_value"
    quote = _QUOTE.search(text)
    if quote and not _DATED_YEAR.search(text):  # "price of gold in 1980" is history, not a quote
        return "moving_value"
    return ""


def _today_forms(now: float) -> Iterable[str]:
    """Today's date as answers write it (ISO, "November 27, 2026", "27 November 2026", "27/11/2026")."""
    t = time.gmtime(now)
    month = time.strftime("%B", t)
    yield time.strftime("%Y-%m-%d", t)
    yield f"{month} {t.tm_mday}, {t.tm_year}"
    yield f"{t.tm_mday} {month} {t.tm_year}"
    yield f"{t.tm_mon:02d}/{t.tm_mday:02d}/{t.tm_year}"
    yield f"{t.tm_mday:02d}/{t.tm_mon:02d}/{t.tm_year}"


def volatile_answer(text: str, now: float | None = None) -> str:
    """Why the answer ``text`` is dated (``dated_answer``: names today, yesterday or says so), or ""."""
    if _ANSWER_DATED.search(text):
        return "dated_answer"
    now = time.time() if now is None else now
    lowered = text.lower()
    # Yesterday and tomorrow too: the upstream's clock and zone need not be ours.
    for day in (now - 86400, now, now + 86400):
        if any(form.lower() in lowered for form in _today_forms(day)):
            return "dated_answer"
    return ""
