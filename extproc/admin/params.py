"""Admin request parameters: parsed and checked before anything reaches a backend.

A bad value is the caller's mistake and gets a 400 naming it; it must never reach Milvus, where
a value it cannot parse fails the call (and, before data errors were told apart, opened the
circuit breaker for every tenant).  So: JSON without NaN / Infinity, numbers finite and in
range, text that is valid Unicode (no lone surrogates such as ``"\\ud800"``), and selectors
without control characters (Milvus Lite cannot parse the ``\\u0001`` a filter would hold).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from extproc.cache.schema import EntryFilter

MAX_AGE_SECONDS = 100 * 365 * 86_400
"""The largest ``older_than_seconds`` (100 years: older than any entry, and a time Milvus can store)."""
MAX_SELECTOR_CHARS = 4096
"""Longer ``model`` / ``scope`` / ``fingerprint`` values cannot match any stored entry."""
TEXT_SELECTORS = ("model", "scope", "fingerprint")
"""Selector fields that hold text."""
SELECTORS = (*TEXT_SELECTORS, "older_than_seconds")
"""Every selector field (invalidate's body, export's query)."""


class BadParameter(ValueError):
    """A request parameter that is refused; the message is the 400 answer."""


def _reject_constant(name: str) -> Any:
    raise BadParameter(f"{name} is not a JSON number: send a finite number")


def parse_body(raw: bytes) -> dict[str, Any]:
    """The JSON object of a request body ({} when empty); :class:`BadParameter` otherwise."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except BadParameter:
        raise
    except (ValueError, RecursionError):
        raise BadParameter("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadParameter("the body must be a JSON object")
    return data


def is_text(value: str) -> bool:
    """True when ``value`` is valid Unicode text (encodes as UTF-8: no lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def text(name: str, value: Any, limit: int = MAX_SELECTOR_CHARS, controls: bool = True) -> str:
    """``value`` checked as a string of valid text of at most ``limit`` characters (``controls``:
    C0 control characters U+0000-U+001F allowed, as a prompt's newlines are)."""
    if not isinstance(value, str):
        raise BadParameter(f"{name} must be a string")
    if not is_text(value):
        raise BadParameter(f"{name} must be valid Unicode text (it holds a lone surrogate such as \\ud800)")
    if not controls and any(ch < " " for ch in value):
        raise BadParameter(f"{name} must not hold control characters (U+0000 to U+001F)")
    if len(value) > limit:
        raise BadParameter(f"{name} must be at most {limit} characters")
    return value


def number(
    name: str, value: Any, low: float, high: float, what: str = "a number", from_text: bool = False
) -> float:
    """``value`` checked as a finite number in [low, high] (``from_text``: numeric text too)."""
    if isinstance(value, str) and from_text:
        try:
            value = float(value)
        except ValueError:
            raise BadParameter(f"{name} must be {what}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadParameter(f"{name} must be {what}")
    if not math.isfinite(value) or not low <= value <= high:
        raise BadParameter(f"{name} must be {what} between {_plain(low)} and {_plain(high)}")
    return float(value)


def integer(name: str, value: Any, low: int, high: int) -> int:
    """``value`` checked as a JSON integer in [low, high] (not a bool, not 2.0)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadParameter(f"{name} must be an integer between {low} and {high}")
    return value


def query_params(pairs: Iterable[tuple[str, str]], known: Iterable[str]) -> dict[str, str]:
    """The query parameters as a dict; :class:`BadParameter` for an unknown or repeated key.

    A misspelt selector (``?modle=x``) would otherwise select nothing and so export everything,
    and of a repeated one (``?model=a&model=b``) only the first would count.
    """
    allowed = tuple(known)
    values: dict[str, str] = {}
    repeated: set[str] = set()
    for key, value in pairs:
        if key in values:
            repeated.add(key)
        values[key] = value
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise BadParameter(f"unknown query parameter(s) {names}; known: {', '.join(allowed) or 'none'}")
    if repeated:
        names = ", ".join(sorted(repeated))
        raise BadParameter(f"query parameter(s) {names} given more than once: give each once")
    return values


def _plain(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


def parse_selector(data: Mapping[str, Any], now: float, query: bool = False) -> EntryFilter:
    """An :class:`EntryFilter` from body fields, or ``query`` parameters (raises :class:`BadParameter`)."""
    values: dict[str, Any] = {}
    for name in SELECTORS:
        # No entry has an empty model, scope or fingerprint: an empty value is a script's unset
        # variable (`--model "$MODEL"`), and taken as absent it would select every entry.
        if data.get(name) == "":
            raise BadParameter(f"{name} is empty: give a value, or leave it out to select every entry")
    for name in TEXT_SELECTORS:
        value = data.get(name)
        if value is not None:
            values[name] = text(name, value, controls=False)  # a selector becomes a Milvus filter
    older = data.get("older_than_seconds")
    if older is not None:
        seconds = number("older_than_seconds", older, 0, MAX_AGE_SECONDS, "a number of seconds", query)
        values["created_before"] = now - seconds
    return EntryFilter(**values)
