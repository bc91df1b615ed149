"""The code guard: code must match exactly, whitespace included (the embedding cannot see it)."""

from __future__ import annotations

import pytest

from extproc.cache.guards.code import CodeGuard, code_segments
from extproc.protocol.openai import normalize_text

GUARD = CodeGuard()

REJECTED = [
    # a string literal's inner whitespace (the probe)
    ("x = 'a    b'; print(len(x))", "x = 'a b'; print(len(x))"),
    # Python: the indented return is inside the loop in one, after it in the other
    (
        "What does this print?\n```python\nfor i in range(3):\n    pass\n    print(i)\n```",
        "What does this print?\n```python\nfor i in range(3):\n    pass\nprint(i)\n```",
    ),
    # lines joined
    ("print(1)\nprint(2)", "print(1) print(2)"),
    # YAML: nesting is meaning
    (
        "Is this valid?\n```yaml\na:\n  b: 1\n  c: 2\n```",
        "Is this valid?\n```yaml\na:\n  b: 1\nc: 2\n```",
    ),
    # inline code
    ("Why does `a  =  b` fail?", "Why does `a = b` fail?"),
    # indented block without a fence
    ("Fix this:\n\n    if x:\n        y()", "Fix this:\n\n    if x:\n    y()"),
    # code in one prompt only
    ("How do I sort a list?\n```\nsorted(xs)\n```", "How do I sort a list?"),
]

ACCEPTED = [
    ("What is Envoy?", "What is Envoy?"),
    ("What is  Envoy proxy?", "What is Envoy proxy?"),  # prose: whitespace is not meaning
    ("Tell me about Paris.\nKeep it short.", "Tell me about Paris. Keep it short."),
    ("How do I reverse `xs` in Python?", "How can I reverse `xs` in Python?"),  # same code, new words
    ("What is the capital of France", "Which city is the capital of France"),
]


@pytest.mark.parametrize(("query", "candidate"), REJECTED)
def test_different_code_is_rejected(query: str, candidate: str) -> None:
    q, c = normalize_text(query), normalize_text(candidate)
    assert GUARD.reject(q, c) and GUARD.reject(c, q)


@pytest.mark.parametrize(("query", "candidate"), ACCEPTED)
def test_same_code_or_prose_is_accepted(query: str, candidate: str) -> None:
    q, c = normalize_text(query), normalize_text(candidate)
    assert not GUARD.reject(q, c) and not GUARD.reject(c, q)


def test_code_segments_in_order() -> None:
    text = "Use `f()` here:\n```\nx = 1\n```\nthen\n\n    y = 2"
    assert code_segments(text) == ["```\nx = 1\n```", "`f()`", "    y = 2"]
    assert code_segments("```\nunclosed fence") == ["```\nunclosed fence"]
    assert code_segments("no code at all") == []
