"""Numbers written several ways, rewritten to one before the guards tokenize a prompt.

Roman numerals ("World War II" = "WW2"), simple fractions ("1/2 cup" = "0.5 cup"), a letter in
brackets after a number ("401(k)" = "401k") and degrees ("°F" = "Fahrenheit").
"""

from __future__ import annotations

import re

# A Roman numeral of two or more capitals is a number ("World War II" = "WW2" = "the Second World
# War", "Rocky III"); a lone I or V or X is a word or a letter, and text in capitals throughout
# keeps its words ("MIX", "VIVID" are no numerals anyway).
_ROMAN = re.compile(r"\b(?=[IVX]{2,6}\b)(X{0,3})(IX|IV|VI{0,3}|I{0,3})\b")
# "401(k)" is "401k": a letter in brackets right after a number belongs to it.
_BRACKETED_SUFFIX = re.compile(r"(\d)\(([a-z])\)")
# A simple fraction is a number ("1/2 cup" = "half a cup" = "0.5 cup"), not two; dates (1/2/2020)
# and ratios of larger numbers (24/7, 50/50, 9/11) keep their digits.
_FRACTION = re.compile(r"(?<![\d/.,])(\d{1,2})\s*/\s*(\d{1,2})(?![\d/.,]?\d)")
# "°F", "degrees F": Fahrenheit, as "350 F" already is (and C: Celsius).
_FRACTION_BOTTOMS = frozenset((2, 3, 4, 5, 8, 10, 16))  # not 9/11, 7/11
_DEGREES = re.compile(r"(?:°|℉|℃|\bdeg(?:ree)?s?\.?)\s*([fc])\b|([℉℃])")


def _fraction(match: re.Match[str]) -> str:
    top, bottom = int(match.group(1)), int(match.group(2))
    if not 0 < top < bottom or bottom not in _FRACTION_BOTTOMS:
        return match.group(0)
    return f" {top / bottom:.4g} "


def _roman(match: re.Match[str]) -> str:
    tens, ones = match.group(1), match.group(2)
    if not match.group(0):
        return match.group(0)
    value = 10 * len(tens) + {"IX": 9, "IV": 4}.get(ones, ("V" in ones) * 5 + ones.count("I"))
    return str(value)


def _degrees(match: re.Match[str]) -> str:
    letter = match.group(1) or ("f" if match.group(2) == "℉" else "c")
    return " fahrenheit " if letter == "f" else " celsius "


def roman_numerals(text: str) -> str:
    """``text`` (as written: capitals matter) with its Roman numerals as digits."""
    if "I" in text or "V" in text or "X" in text:
        return _ROMAN.sub(_roman, text)
    return text


def fractions(text: str) -> str:
    """``text`` with its simple fractions as decimals ("1/2" → "0.5"; not 9/11 or 1/2/2020)."""
    return _FRACTION.sub(_fraction, text) if "/" in text else text


def one_spelling(lowered: str) -> str:
    """Lower-cased ``lowered`` with fractions, bracketed suffixes and degrees written one way."""
    lowered = fractions(lowered)
    if "(" in lowered:
        lowered = _BRACKETED_SUFFIX.sub(r"\1\2", lowered)
    if "deg" in lowered or "°" in lowered or "℉" in lowered or "℃" in lowered:
        lowered = _DEGREES.sub(_degrees, lowered)
    return lowered
