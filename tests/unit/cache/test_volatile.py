"""The time-sensitive prompt and answer detector."""

from __future__ import annotations

import calendar

import pytest

from extproc.cache.volatile import volatile_answer, volatile_prompt


@pytest.mark.parametrize(
    ("prompt", "reason"),
    [
        ("What's the weather in Paris today?", "relative_time"),
        ("Who won last night's game?", "relative_time"),
        ("What happened 3 days ago in the stock market?", "relative_time"),
        ("Any good concerts this weekend?", "relative_time"),
        ("What will the weather be like tomorrow in Oslo?", "relative_time"),
        ("What is the current price of gold?", "moving_value"),
        ("latest version of numpy", "moving_value"),
        ("What is the price of bitcoin?", "moving_value"),
        ("What's the weather like in Berlin?", "moving_value"),
        ("What's the exchange rate for USD to EUR?", "moving_value"),
    ],
)
def test_time_sensitive_prompts(prompt: str, reason: str) -> None:
    assert volatile_prompt(prompt) == reason


@pytest.mark.parametrize(
    "prompt",
    [
        "How does current flow in a resistor?",
        "What is the capital of France?",
        "What was the price of gold in 1980?",  # history, a date of its own
        "Is religion still relevant today?",  # today as "nowadays"
        "What happened the next day after the Battle of Hastings?",
        "Can a girl get pregnant on the last day of her period?",
        "How do I reverse a list in Python?",
        "Now that I graduated, how do I find a job?",
    ],
)
def test_ordinary_prompts(prompt: str) -> None:
    assert volatile_prompt(prompt) == ""


def test_answers_that_name_today_are_dated() -> None:
    now = calendar.timegm((2026, 11, 27, 12, 0, 0))
    assert volatile_answer("As of November 27, 2026, the index stands at 5,000.", now) == "dated_answer"
    assert volatile_answer("Today is 2026-11-26 in UTC-10.", now) == "dated_answer"  # the upstream's zone
    assert volatile_answer("I don't have real-time data, but gold traded near $2,000.", now) == "dated_answer"
    assert volatile_answer("Paris has been the capital since 987.", now) == ""
    assert volatile_answer("The treaty was signed on November 27, 1995.", now) == ""
