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

import asyncio
import calendar
import re
import time
from functools import lru_cache

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
    r"(?:\s+outside)?\s+(?:of|for|in|at|like)\b|"
    # "How's the weather in Paris?", "What's the weather?": the sky asked about, nothing dated.
    r"\b(?:what(?:'s| is)|how(?:'s| is))\s+the\s+(?:weather|temperature|forecast)"
    r"(?:\s+(?:outside|like|today|now|right now))?\s*(?:\s(?:in|at|for)\s+[^?.!]{1,40})?[?.!]*\s*$",
    re.IGNORECASE,
)
# "what's the Bitcoin price?", "what is Apple's stock price?", "what is the USD to EUR exchange
# rate?": the same question with the asset before the price.
_QUOTE_NAMED = re.compile(
    r"\b(?:what(?:'s| is| are)|how much is|how much are)\s+(?:the\s+)?(?:current\s+)?"
    r"(?:[\w.&'’-]+\s+){1,3}(?:price|prices|exchange rate)\s*[?.!]*\s*$",
    re.IGNORECASE,
)
# "how much does bitcoin cost?", "how much is an ounce of gold worth?": a market asset's price.
_ASSET_COST = re.compile(
    r"\bhow\s+much\s+(?:does|do|is|are)\s+(?:a\s+|an\s+|one\s+|1\s+)?"
    r"(?:(?:ounce|barrel|gallon|share|litre|liter)\s+of\s+)?"
    r"(?:bitcoin|btc|ethereum|ether|eth|dogecoin|gold|silver|oil|crude|gasoline|petrol|[\w.&'’-]+\s+stock)s?"
    r"\s+(?:cost|worth|trading\s+at|going\s+for|selling\s+for)\b",
    re.IGNORECASE,
)
# Asking the clock, the calendar or the sky right now: "what time is it in Tokyo?", "what day
# of the week is it?", "what's the date?", "is it raining in Seattle?".
_NOW_QUESTION = re.compile(
    r"\bwhat\s+(?:time|day|date|year|month)(?:\s+of\s+the\s+(?:week|month|year))?\s+is\s+it\b|"
    r"\bwhat(?:'s|\s+is)\s+(?:the\s+(?:current\s+)?|current\s+)(?:date|time)"
    r"(?:\s+(?:now|today|right\s+now|in\s+\w+(?:\s+\w+)?))?\s*[?.!]*\s*$",
    re.IGNORECASE,
)
_WEATHER_NOW = re.compile(
    r"\bis\s+it\s+(?:raining|snowing|pouring|storming|hailing)\b|"
    r"\b(?:is\s+it\s+going\s+to|will\s+it)\s+(?:rain|snow|pour|storm|hail)\b|"
    r"\bwhat\s+will\s+the\s+(?:weather|temperature|forecast)\s+be\b",
    re.IGNORECASE,
)
_DATED = re.compile(
    r"\b(?:1[5-9]\d\d|20\d\d)\b|"
    # "the weather in Paris in July", "in winter": the climate of a time of year, not the sky now
    r"\b(?:in|during|for)\s+(?:the\s+)?(?:early\s+|late\s+|mid[- ])?(?:january|february|march|april|may|"
    r"june|july|august|september|october|november|december|spring|summer|autumn|fall|winter)\b",
    re.IGNORECASE,
)
SCAN_CHARS = 4096
"""A longer prompt is read at its head and tail only, where a question is asked around a pasted
document (a relative date deep inside one is the document's): the check stays a few ms on the
event loop (1 MB took 345 ms)."""

# The answer says it is dated.
_ANSWER_DATED = re.compile(
    r"\b(?:as of (?:my|the) (?:last|latest|most recent) (?:update|knowledge)|"
    r"i (?:do not|don't|cannot|can't) (?:have|provide|access) "
    r"(?:access to )?(?:real[- ]time|live|current)|"
    r"as of today|at the time of writing)\b",
    re.IGNORECASE,
)


def volatile_prompt(text: str, *earlier: str) -> str:
    """Why ``text`` asks about what changes with time (``relative_time``, ``moving_value``), or "".

    ``earlier``: the user turns before it; a follow-up of a time-sensitive question ("And in
    London?" after "What's the weather in Paris today?") is time-sensitive too."""
    for turn in (text, *reversed(earlier)):
        reason = _volatile(turn)
        if reason:
            return reason
    return ""


def _volatile(text: str) -> str:
    if len(text) > 2 * SCAN_CHARS:
        text = text[:SCAN_CHARS] + "\n" + text[-SCAN_CHARS:]
    if _RELATIVE.search(TODAY_AS_ERA.sub(" ", text)) or _NOW_QUESTION.search(text):
        return "relative_time"
    if _PRESENT_MOVING.search(text) or _WEATHER_NOW.search(text):
        return "moving_value"
    quote = _QUOTE.search(text) or _QUOTE_NAMED.search(text) or _ASSET_COST.search(text)
    if quote and not _DATED.search(text):  # "price of gold in 1980" is history, not a quote
        return "moving_value"
    return ""


# English names whatever the process's locale (calendar's follow it).
_MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@lru_cache(maxsize=8)
def _date_pattern(year: int, month: int, day: int) -> re.Pattern[str]:
    """The ways answers write this date: "2026-12-07" (also with a time after it), "December 7th,
    2026", "Dec. 7, 2026", "7 December 2026", "Monday, December 7", "12/7/2026", "12-07-2026",
    "07.12.2026"…

    A day and month without the year count only after the date's own weekday ("Happy Monday,
    December 7!"): "December 7, 1941" is another December 7."""
    weekday = _WEEKDAY_NAMES[calendar.weekday(year, month, day)]
    full = _MONTH_NAMES[month - 1]
    short = full[:3]
    months = "|".join(dict.fromkeys((full, short + r"\.?", r"Sept\.?" if month == 9 else short)))
    d = rf"0?{day}(?:st|nd|rd|th)?"
    m, y = rf"(?:{months})", str(year)
    forms = (
        rf"{y}[-/]{month:02d}[-/]{day:02d}",
        rf"{m}\s+{d},?\s+{y}",
        rf"{d}\s+(?:of\s+)?{m},?\s+{y}",
        rf"{weekday},?\s+(?:{m}\s+{d}|(?:the\s+)?{d}\s+(?:of\s+)?{m})",
        rf"0?{month}(?P<us>[/-])0?{day}(?P=us){y}",
        rf"0?{day}(?P<eu>[/.-])0?{month}(?P=eu){y}",
    )
    # Not inside a longer token ("v2026-12-07a", "2026-12-07.5"), but a time after it is still
    # the date ("2026-12-07T10:44:00Z", a log line's timestamp).
    return re.compile(r"(?<![\w/.-])(?:" + "|".join(forms) + r")(?!(?!T\d)[\w/-]|\.\d)", re.IGNORECASE)


INLINE_ANSWER_CHARS = 64 * 1024
"""A longer answer is checked in a worker thread: the whole text is read (a date anywhere in it
dates it), about 16 ms per MB, which on the event loop would stall every other request."""


async def dated_answer(text: str) -> str:
    """:func:`volatile_answer`, off the event loop for a long answer."""
    if len(text) > INLINE_ANSWER_CHARS:
        return await asyncio.to_thread(volatile_answer, text)
    return volatile_answer(text)


def volatile_answer(text: str, now: float | None = None) -> str:
    """Why the answer ``text`` is dated (``dated_answer``: names today, yesterday or says so), or ""."""
    if _ANSWER_DATED.search(text):
        return "dated_answer"
    now = time.time() if now is None else now
    # Yesterday and tomorrow too: the upstream's clock and zone need not be ours.
    lowered = text.lower()
    for moment in (now - 86400, now, now + 86400):
        t = time.gmtime(moment)
        # Every form holds the year or the weekday: a substring test spares most answers the regex.
        if str(t.tm_year) not in text and _WEEKDAY_NAMES[t.tm_wday].lower() not in lowered:
            continue
        if _date_pattern(t.tm_year, t.tm_mon, t.tm_mday).search(text):
            return "dated_answer"
    return ""
