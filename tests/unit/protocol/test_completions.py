"""The legacy /v1/completions format: request identity, response parsing, JSON and SSE replay."""

from __future__ import annotations

import json

import pytest

from extproc.errors import NotCacheable, NotStorable
from extproc.protocol.completions import (
    parse_completions_request,
    parse_json_text_completion,
    parse_sse_text_completion,
    render_text_completion,
    render_text_sse,
)
from extproc.protocol.openai import parse_chat_request
from extproc.protocol.sse import iter_sse_data


def body(**fields: object) -> bytes:
    """A completions request body."""
    return json.dumps({"model": "m", "prompt": "Say hi", **fields}).encode()


def test_request_identity() -> None:
    plain = parse_completions_request(body())
    assert (plain.model, plain.prompt, plain.stream, plain.n) == ("m", "Say hi", False, 1)
    streamed = parse_completions_request(body(stream=True, stream_options={"include_usage": True}))
    assert streamed.fingerprint == plain.fingerprint and streamed.include_usage
    assert parse_completions_request(body(prompt=["Say hi  "])).fingerprint == plain.fingerprint
    assert parse_completions_request(body(max_tokens=5)).fingerprint != plain.fingerprint
    chat = parse_chat_request(
        json.dumps({"model": "m", "messages": [{"role": "user", "content": "Say hi"}]}).encode()
    )
    assert chat.fingerprint != plain.fingerprint  # a chat answer is never a text completion


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"prompt": [1, 2, 3]}, "unsupported_prompt"),
        ({"prompt": ["a", "b"]}, "unsupported_prompt"),
        ({"prompt": "  "}, "empty_prompt"),
        ({"model": ""}, "no_model"),
    ],
)
def test_requests_it_does_not_cache(fields: dict[str, object], reason: str) -> None:
    with pytest.raises(NotCacheable) as info:
        parse_completions_request(body(**fields))
    assert info.value.reason == reason


def stored(text: str = "Hello there, how are you?", finish: str = "stop") -> dict[str, object]:
    """A text_completion as the upstream sends it."""
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 6, "total_tokens": 8},
    }


def test_json_and_sse_round_trip() -> None:
    completion = stored()
    parsed = parse_json_text_completion(json.dumps(completion).encode())
    served = json.loads(render_text_completion(parsed))
    assert served["object"] == "text_completion" and served["id"] != "cmpl-1"
    assert served["choices"] == completion["choices"]
    stream = render_text_sse(parsed, include_usage=True, piece_chars=5)
    payloads = list(iter_sse_data(stream))
    assert payloads[-1] == "[DONE]" and json.loads(payloads[-2])["usage"] == completion["usage"]
    again = parse_sse_text_completion(stream)
    assert again["choices"] == completion["choices"] and again["usage"] == completion["usage"]


@pytest.mark.parametrize(
    ("finish", "reason"),
    [("length", "truncated"), ("content_filter", "content_filter"), (None, "incomplete")],
)
def test_unfinished_answers_are_not_stored(finish: str | None, reason: str) -> None:
    with pytest.raises(NotStorable) as info:
        parse_json_text_completion(json.dumps(stored(finish=finish)).encode())  # type: ignore[arg-type]
    assert info.value.reason == reason


def test_a_stream_without_done_is_not_stored() -> None:
    stream = render_text_sse(stored(), include_usage=False)
    with pytest.raises(NotStorable) as info:
        parse_sse_text_completion(stream.replace(b"data: [DONE]\n\n", b""))
    assert info.value.reason == "stream_incomplete"
