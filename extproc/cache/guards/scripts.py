"""Text in any script for the English-minded guards: numbers by value, CJK negation, what they can read.

- Digits of every script are one number: ``１５`` (full width), ``१५`` (Devanagari), ``١٥``
  (Arabic-Indic) read as ``15``; Chinese / Japanese numerals (``十五``, ``二十``, ``三百五十``,
  ``第三``) too, when they are a number: a run with a multiplier (十 百 千 万 亿), two numerals or
  more, ``第`` before it, or a measure word after it (``一个`` is one; ``一些`` is "some").
- Negation in Chinese and Japanese text, where words are not separated by spaces.
- :func:`readable`: the word guards (content, opposites) read Latin-script words only; a word of
  another script is never "missing" from a paraphrase just because it was not split into words.
"""

from __future__ import annotations

import re
import unicodedata

_CJK_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "兩": 2, "三": 3, "四": 4, "五": 5}
_CJK_DIGITS |= {"六": 6, "七": 7, "八": 8, "九": 9}
_CJK_UNITS = {"十": 10, "拾": 10, "百": 100, "佰": 100, "千": 1000, "仟": 1000}
_CJK_BIG = {"万": 10_000, "萬": 10_000, "亿": 100_000_000, "億": 100_000_000}
_NUMERAL = "".join(_CJK_DIGITS) + "".join(_CJK_UNITS) + "".join(_CJK_BIG)
_MEASURE = "个個岁歲年月日号號点點元块塊次人天周週米里斤克度分秒倍台本张張件只條条位名页頁章"
_CJK_NUMBER = re.compile(rf"(第)?([{_NUMERAL}]+)(?=([{_MEASURE}%％])?)")
_DIGIT = re.compile(r"\d")  # every script's decimal digits (Unicode Nd)
_POWER = re.compile("[⁰¹²³⁴⁵⁶⁷⁸⁹]+")  # superscript digits: an exponent

# Chinese negators, minus the words that merely contain one (不过 "but", 非常 "very", 无论
# "regardless", 不错 "good", 没关系 "never mind", 不同 "different", 并非 is kept: "is not").
_ZH_NEGATION = re.compile(
    r"不(?!过|過|错|錯|同|但|仅|僅|管|论|論|久)|没有?|沒有?|别(?!人|的)|未(?!来|來)|无(?!论|論)|無(?!論)|非(?!常)"
)
_JA_NEGATION = re.compile(r"(?:な[いかく]|ません|ず(?:に)?|ぬ)(?![ぁ-ゖ])")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]")
_CJK_RUN = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uf900-\ufaff]+")


def _cjk_value(run: str) -> int:
    """The value of a run of Chinese numerals (十五 → 15, 三百零五 → 305, 两万 → 20000)."""
    total = section = digit = 0
    for ch in run:
        if ch in _CJK_DIGITS:
            digit = digit * 10 + _CJK_DIGITS[ch] if digit and not section else _CJK_DIGITS[ch]
        elif ch in _CJK_UNITS:
            section += (digit or 1) * _CJK_UNITS[ch]
            digit = 0
        else:
            total = (total + section + digit) * _CJK_BIG[ch]
            section = digit = 0
    return total + section + digit


_IDIOMS = ("十分", "万一", "萬一", "一一", "一些", "一样", "一樣", "一直", "一定", "一起")
"""Numeral characters that are words here ("very", "in case", "some", "same", "always"…)."""


def _replace_cjk(match: re.Match[str]) -> str:
    ordinal, run, measure = match.group(1), match.group(2), match.group(3)
    if not ordinal and match.string.startswith(_IDIOMS, match.start()):
        return match.group(0)
    is_number = ordinal or measure or len(run) > 1 or any(c in _CJK_UNITS or c in _CJK_BIG for c in run)
    if not is_number or all(c in _CJK_BIG for c in run):
        return match.group(0)
    return f"{ordinal or ''} {_cjk_value(run)} "


def ascii_numbers(text: str) -> str:
    """``text`` with the digits of every script and Chinese numerals written as ASCII numbers,
    and runs of Chinese / Japanese set apart from Latin words ("在Linux上" → "在 Linux 上")."""
    if text.isascii():
        return text
    text = _DIGIT.sub(lambda m: str(unicodedata.decimal(m.group())), text)
    if _POWER.search(text):  # "x²" is "x^2"
        text = _POWER.sub(lambda m: "^" + "".join(str(unicodedata.digit(c)) for c in m.group()), text)
    if not _CJK.search(text):
        return text
    return _CJK_RUN.sub(r" \g<0> ", _CJK_NUMBER.sub(_replace_cjk, text))


def cjk_negations(text: str) -> int:
    """How many negations a Chinese or Japanese text has (0 for text without CJK)."""
    if not _CJK.search(text):
        return 0
    return len(_ZH_NEGATION.findall(text)) + len(_JA_NEGATION.findall(text))


_LATIN = re.compile(r"[a-z0-9]")


def readable(word: str) -> bool:
    """True for a word the English word guards can judge (Latin letters or digits)."""
    return _LATIN.search(word) is not None


def mostly_non_latin(text: str) -> bool:
    """True when more than half the letters of ``text`` are outside the Latin script."""
    return not text.isascii() and non_latin_share(text) > 0.5


def non_latin_share(text: str) -> float:
    """The share of letters in ``text`` outside the Latin script (0 for no letters)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 0.0
    other = sum(1 for c in letters if not c.isascii() and "LATIN" not in unicodedata.name(c, ""))
    return other / len(letters)
