"""Guards on text in any script: numbers by value, CJK negation, words they cannot read."""

from __future__ import annotations

import pytest

from extproc.cache.guards import ContentGuard, NegationGuard, NumbersGuard, OppositesGuard
from extproc.cache.guards.scripts import ascii_numbers, cjk_negations, mostly_non_latin


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("我有十五个苹果", "15"),
        ("第三章讲什么", "3"),
        ("三百零五", "305"),
        ("两万块钱", "20000"),
        ("１５ apples", "15"),
        ("१५ सेब", "15"),
        ("٢٠ تفاحة", "20"),
    ],
)
def test_numbers_of_any_script_read_as_ascii(text: str, numbers: str) -> None:
    assert numbers in ascii_numbers(text).split()


@pytest.mark.parametrize("text", ["十分重要", "一些问题", "一样的", "万一下雨怎么办"])
def test_numeral_characters_inside_words_stay(text: str) -> None:
    assert ascii_numbers(text).split() == [text]  # no number split out of the word


def test_numbers_guard_compares_values_across_scripts() -> None:
    guard = NumbersGuard()
    assert guard.reject("我有十五个苹果，怎么分？", "我有二十个苹果，怎么分？")
    assert not guard.reject("我有十五个苹果", "我有15个苹果")
    assert not guard.reject("What is 15% of 80?", "What is １５% of ８０?")
    assert guard.reject("१५ का वर्ग क्या है", "१६ का वर्ग क्या है")


def test_negation_in_chinese_and_japanese() -> None:
    guard = NegationGuard()
    assert guard.reject("这个药安全吗？", "这个药不安全吗？")
    assert guard.reject("我有时间", "我没有时间")
    assert guard.reject("寿司を食べる", "寿司を食べない")
    assert not guard.reject("这个药非常安全吗？", "这个药安全吗？")  # 非常 is "very"
    assert cjk_negations("What is not safe?") == 0


async def test_word_guards_do_not_judge_what_they_cannot_read() -> None:
    query, candidate = "如何在Linux上重置密码？", "怎样在Linux里重设密码？"
    assert not await ContentGuard().reject(query, candidate)
    assert not OppositesGuard().reject(query, candidate)
    assert await ContentGuard().reject("如何在Linux上重置密码？", "如何在Windows上重置密码？")


def test_mostly_non_latin() -> None:
    assert mostly_non_latin("如何重置我的密码")
    assert mostly_non_latin("Как сбросить пароль?")
    assert not mostly_non_latin("How do I reset my password in 北京?")
    assert not mostly_non_latin("Ça coûte combien, un café à Zürich?")
