"""Round trips (hypothesis): any completion the upstream could send comes back unchanged, apart
from ``id`` and ``created``, whichever way it is stored (JSON or stream), through either
backend's stored form, and whichever way it is served (JSON or SSE)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.cache.backends.milvus.rows import decode_response, encode_response
from extproc.protocol.openai import (
    parse_json_completion,
    parse_sse_completion,
    render_completion,
    render_sse,
)
from tests.support.streams import upstream_stream

# Text with what breaks naive SSE readers: line and paragraph separators, NEL, CR, LF, emoji.
text = st.lists(
    st.one_of(
        st.characters(codec="utf-8", exclude_categories=("Cs",)),
        st.sampled_from(["\u2028", "\u2029", "\x85", "\r", "\n", "\r\n", "😀", "data: ", "[DONE]"]),
    ),
    max_size=12,
).map("".join)
words = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=8)
vendor_key = st.from_regex(r"x_[a-z]{1,5}", fullmatch=True)
json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(words, inner, max_size=3),
    max_leaves=6,
)
vendor = st.dictionaries(vendor_key, json_value, max_size=2)
optional_text = st.none() | text


def token(t: str) -> st.SearchStrategy[dict[str, Any]]:
    """A logprobs entry for token text ``t``."""
    entry = st.fixed_dictionaries(
        {"token": st.just(t), "logprob": st.floats(-50, 0), "bytes": st.just(list(t.encode()))}
    )
    return st.fixed_dictionaries(
        {
            "token": st.just(t),
            "logprob": st.floats(-50, 0),
            "bytes": st.just(list(t.encode())),
            "top_logprobs": st.lists(entry, max_size=2),
        }
    )


@st.composite
def choice(draw: st.DrawFn, index: int) -> dict[str, Any]:
    """One choice with any mix of the fields vLLM and OpenAI send."""
    spelled = draw(st.lists(text, max_size=6))  # the content as the tokens that spell it
    content = draw(st.none() | st.just("".join(spelled)) | text)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    for key in ("refusal", "reasoning_content", "reasoning"):
        if draw(st.booleans()):
            message[key] = draw(optional_text)
    for key in ("annotations", "audio", "function_call"):  # vLLM sends these as null
        if draw(st.booleans()):
            message[key] = None
    calls = st.fixed_dictionaries(
        {
            "id": words.map("chatcmpl-tool-{}".format),
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": words, "arguments": text}),
        }
    )
    if draw(st.booleans()):
        message["tool_calls"] = draw(st.lists(calls, max_size=3))
    message.update(draw(vendor))
    out: dict[str, Any] = {"index": index, "message": message}
    if draw(st.booleans()):
        tokens = st.tuples(*(token(t) for t in spelled)).map(list) | st.lists(text.flatmap(token), max_size=4)
        out["logprobs"] = draw(st.none() | st.fixed_dictionaries({"content": tokens}))
    out["finish_reason"] = draw(st.sampled_from(["stop", "tool_calls"]))
    if draw(st.booleans()):
        out["stop_reason"] = draw(st.none() | st.integers(0, 200_000) | text)
    out.update(draw(vendor))
    return out


@st.composite
def completion(draw: st.DrawFn) -> dict[str, Any]:
    """Any chat.completion an upstream could send."""
    n = draw(st.integers(1, 3))
    counts = st.integers(0, 100_000)
    usage: dict[str, Any] = {
        "prompt_tokens": draw(counts),
        "completion_tokens": draw(counts),
        "total_tokens": draw(counts),
    }
    if draw(st.booleans()):
        usage["prompt_tokens_details"] = draw(st.none() | st.fixed_dictionaries({"cached_tokens": counts}))
    if draw(st.booleans()):
        usage["completion_tokens_details"] = draw(st.fixed_dictionaries({"reasoning_tokens": counts}))
    out: dict[str, Any] = {
        "id": draw(words.map("chatcmpl-{}".format)),
        "object": "chat.completion",
        "created": draw(st.integers(0, 2**31)),
        "model": draw(words),
        "choices": [draw(choice(i)) for i in range(n)],
    }
    for key, values in {
        "service_tier": st.none() | st.just("default"),
        "system_fingerprint": st.none() | words,
        "prompt_logprobs": st.none() | st.lists(st.none() | st.dictionaries(words, json_value), max_size=2),
        "kv_transfer_params": st.none() | st.dictionaries(words, json_value, max_size=2),
    }.items():
        if draw(st.booleans()):
            out[key] = draw(values)
    out["usage"] = usage
    out.update(draw(vendor))
    return out


def same(a: dict[str, Any], b: dict[str, Any]) -> None:
    """``a`` equals ``b`` apart from ``id`` and ``created``."""
    strip = ("id", "created")
    assert {k: v for k, v in a.items() if k not in strip} == {k: v for k, v in b.items() if k not in strip}


STORAGE: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    # the memory backend keeps the dict; its exports write it as JSON
    "memory": lambda r: json.loads(json.dumps(r, ensure_ascii=False)),
    "milvus": lambda r: decode_response(encode_response(r)),
}
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("backend", sorted(STORAGE))
@SETTINGS
@given(original=completion(), piece_chars=st.integers(1, 20))
def test_json_stored_served_as_sse_reads_back_the_same(
    backend: str, original: dict[str, Any], piece_chars: int
) -> None:
    n = len(original["choices"])
    stored = STORAGE[backend](parse_json_completion(json.dumps(original).encode(), n))
    same(json.loads(render_completion(stored)), original)
    sse = render_sse(stored, include_usage=True, piece_chars=piece_chars)
    same(parse_sse_completion(sse, n), original)


@pytest.mark.parametrize("backend", sorted(STORAGE))
@SETTINGS
@given(original=completion(), seed=st.integers(0, 2**32), piece_chars=st.integers(1, 20))
def test_stream_stored_served_as_json_and_sse_is_the_same(
    backend: str, original: dict[str, Any], seed: int, piece_chars: int
) -> None:
    n = len(original["choices"])
    stored = STORAGE[backend](parse_sse_completion(upstream_stream(original, seed), n))
    same(json.loads(render_completion(stored)), original)
    same(parse_sse_completion(render_sse(stored, True, piece_chars), n), original)
