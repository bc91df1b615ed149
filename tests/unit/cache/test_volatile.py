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
        ("Who scored in today's game?", "relative_time"),  # "in today" is the era only before its nouns
        ("What's in today's news?", "relative_time"),
        ("What time is it in Tokyo?", "relative_time"),
        ("What day of the week is it?", "relative_time"),
        ("What's the date?", "relative_time"),
        ("What's the time in New York?", "relative_time"),
        ("What's the Bitcoin price?", "moving_value"),
        ("What will the weather be in 3 days?", "moving_value"),
        ("Is it raining in Seattle?", "moving_value"),
        # The everyday wording of the same questions (they were cached for the whole TTL).
        ("How's the weather in Paris?", "moving_value"),
        ("How is the weather in Paris?", "moving_value"),
        ("What's the weather?", "moving_value"),
        ("What is the temperature outside in Berlin?", "moving_value"),
        ("Is it going to rain in London?", "moving_value"),
        ("What is Apple's stock price?", "moving_value"),
        ("What is the USD to EUR exchange rate?", "moving_value"),
        ("How much does bitcoin cost?", "moving_value"),
        ("How much is an ounce of gold worth?", "moving_value"),
        ("Long pasted notes. " * 5000 + "What's the weather in Paris today?", "relative_time"),
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
        "What is the weather like in Paris in July?",  # the climate of a time of year
        "What is the temperature in Moscow during winter?",
        "Is religion still relevant today?",  # today as "nowadays"
        "What happened the next day after the Battle of Hastings?",
        "Can a girl get pregnant on the last day of her period?",
        "How do I reverse a list in Python?",
        "Now that I graduated, how do I find a job?",
        "In today's society, is marriage still relevant?",
        "What is the time complexity of quicksort?",
        "What is the date of the Battle of Hastings?",
        "What is time?",
        "How much weight can I lose in 3 days?",
        "Is it cold in Seattle in winter?",
        "How much does a car cost?",  # a general price, not a market quote
        "How much does it cost to build a house?",
        "How much was Apple stock worth in 2010?",
        "How is the weather of Pune for living?",
        "Notes. " * 3000 + "Meeting notes of yesterday. " + "More notes. " * 3000 + "Summarize them.",
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


def test_a_follow_up_of_a_time_sensitive_question_is_time_sensitive() -> None:
    assert volatile_prompt("And in London?", "What's the weather in Paris today?") == "relative_time"
    assert volatile_prompt("And in London?", "What is the capital of France?") == ""


@pytest.mark.parametrize(
    "answer",
    [
        "Good morning team! Today is December 7th, 2026.",
        "Today is Dec 7, 2026.",
        "Today is Dec. 7, 2026.",
        "Happy Monday, December 7!",  # no year: the weekday makes it this date
        "It's Monday the 7th of December.",
        "Today is 12/7/2026.",
        "Heute ist der 07.12.2026.",
        "It is 2026/12/07.",
        "Tomorrow, Tuesday, December 8, brings rain.",  # the upstream's zone may be a day ahead
        "[2026-12-07T10:47:14Z] INFO server started",  # a time after the date: still the date
        "Last sync: 2026-12-07T10:47",
        "Report of 12-07-2026.",
        "Report of 07-12-2026.",
    ],
)
def test_the_ways_answers_write_todays_date(answer: str) -> None:
    now = calendar.timegm((2026, 12, 7, 12, 0, 0))
    assert volatile_answer(answer, now) == "dated_answer"


@pytest.mark.parametrize(
    "answer",
    [
        "Pearl Harbor was attacked on December 7, 1941.",
        "We celebrate on December 7 every year.",  # another year's December 7
        "Build 12/7/20265 shipped.",
        "See section 2026-12-07b.",
        "Version 2026-12-07.5 is out.",
        "Ticket 12-07/2026 is closed.",  # two different separators: not a date
    ],
)
def test_other_dates_are_not_today(answer: str) -> None:
    now = calendar.timegm((2026, 12, 7, 12, 0, 0))
    assert volatile_answer(answer, now) == ""
