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
    assert parse_completions_request(body(prompt=["Say hi"])).fingerprint == plain.fingerprint
    # A continuation goes on from the last character: "Say hi  " is another request.
    assert parse_completions_request(body(prompt="Say hi  ")).fingerprint != plain.fingerprint
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


def chunk(text: str, finish: str | None = None, **fields: object) -> bytes:
    """One ``text_completion`` stream event."""
    choice = {"index": 0, "text": text, "finish_reason": finish, **fields}
    payload = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": [choice]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def probs(tokens: list[str], start: int = 0) -> dict[str, object]:
    """Legacy logprobs for ``tokens``, the first at character ``start``."""
    offsets = [start + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    return {
        "tokens": tokens,
        "token_logprobs": [-len(t) / 10 for t in tokens],
        "top_logprobs": [{t: -len(t) / 10} for t in tokens],
        "text_offset": offsets,
    }


def test_a_stream_keeps_logprobs_and_stop_reason() -> None:
    stream = (
        chunk("Hi", logprobs=probs(["Hi"]), stop_reason=None)
        + chunk(" there", "stop", logprobs=probs([" there"], 2), stop_reason="\n\n", token_ids=[7])
        + b"data: [DONE]\n\n"
    )
    choice = parse_sse_text_completion(stream)["choices"][0]
    assert choice == {
        "index": 0,
        "text": "Hi there",
        "logprobs": probs(["Hi", " there"]),
        "finish_reason": "stop",
        "stop_reason": "\n\n",
        "token_ids": [7],
    }
    served = json.loads(render_text_completion(parse_sse_text_completion(stream)))
    assert served["choices"] == [choice]


@pytest.mark.parametrize(
    ("tokens", "piece_chars"),
    [
        (["Hello", " there", ",", " how", " are", " you", "?"], 1),  # the tokens spell the text
        (["Hello", " there", ",", " how", " are", " you", "?"], 8),
        (["bytes:\\xe2", "Hello", " there"], 5),  # they do not: spread over the pieces
    ],
)
def test_json_stream_json_keeps_logprobs_and_stop_reason(tokens: list[str], piece_chars: int) -> None:
    completion = stored()
    choice = completion["choices"][0]  # type: ignore[index]
    choice |= {"logprobs": probs(tokens), "stop_reason": 42}
    stream = render_text_sse(completion, include_usage=False, piece_chars=piece_chars)
    chunks = [json.loads(p)["choices"][0] for p in iter_sse_data(stream) if p != "[DONE]"]
    pieces, final = chunks[:-1], chunks[-1]
    assert all(c["logprobs"] is not None and "stop_reason" not in c for c in pieces)
    if piece_chars == 1:  # each piece carries exactly the tokens of its text
        assert all("".join(c["logprobs"]["tokens"]) == c["text"] for c in pieces)
    assert (final["text"], final["finish_reason"], final["stop_reason"]) == ("", "stop", 42)
    assert parse_sse_text_completion(stream)["choices"] == [choice]


def test_several_choices_are_interleaved_and_read_back() -> None:
    completion = stored()
    first = completion["choices"][0]  # type: ignore[index]
    second = {"index": 1, "text": "Bye", "logprobs": probs(["B", "ye"]), "finish_reason": "stop"}
    completion["choices"] = [first, second]
    stream = render_text_sse(completion, include_usage=False, piece_chars=4)
    indexes = [json.loads(p)["choices"][0]["index"] for p in iter_sse_data(stream) if p != "[DONE]"]
    assert indexes[:4] == [0, 1, 0, 1]
    assert parse_sse_text_completion(stream, choices_expected=2)["choices"] == [first, second]


def test_text_no_utf8_can_carry_is_served_escaped() -> None:
    # An emoji whose halves came as two \u escapes in two chunks, and a line separator.
    stream = chunk("ok \ud83d") + chunk("\ude00 a\u2028b", "stop") + b"data: [DONE]\n\n"
    completion = parse_sse_text_completion(stream)
    as_json = render_text_completion(completion)
    assert json.loads(as_json)["choices"][0]["text"] == "ok \U0001f600 a\u2028b"
    as_stream = render_text_sse(completion, include_usage=False, piece_chars=2)
    for served in (as_json, as_stream):
        assert "\u2028" not in served.decode("utf-8")  # splitlines readers cannot cut an event
    text = "".join(json.loads(p)["choices"][0]["text"] for p in iter_sse_data(as_stream) if p != "[DONE]")
    assert text.encode("utf-16", "surrogatepass").decode("utf-16") == "ok \U0001f600 a\u2028b"


def test_a_continuation_reads_the_prompt_as_sent() -> None:
    """Normalizing the prompt for the key made "def add(a, b):\\n    " an exact repeat of
    "def add(a, b):" (and served its continuation); an echo quotes the text as sent."""
    code = parse_completions_request(body(prompt="def add(a, b):\n    "))
    assert code.prompt == "def add(a, b):"  # what is embedded and keyed
    assert code.fingerprint != parse_completions_request(body(prompt="def add(a, b):")).fingerprint
    lf, crlf = body(prompt="Line one\nLine two", echo=True), body(prompt="Line one\r\nLine two", echo=True)
    assert parse_completions_request(lf).fingerprint != parse_completions_request(crlf).fingerprint
    lead = parse_completions_request(body(prompt="   Once upon")).fingerprint
    assert lead != parse_completions_request(body(prompt="Once upon")).fingerprint


@pytest.mark.parametrize(
    "fields",
    [
        {"stream": 1},  # vLLM streams on it (lax booleans): a JSON hit would be the wrong form
        {"stream": "true"},
        {"stream_options": {"include_usage": True}},  # without stream: true, a 400 upstream
        {"stream": True, "stream_options": {}},  # usage from vLLM, none from OpenAI
        {"stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}},
    ],
)
def test_stream_flags_servers_read_differently_are_not_cached(fields: dict[str, object]) -> None:
    with pytest.raises(NotCacheable) as info:
        parse_completions_request(body(**fields))
    assert info.value.reason == "unsupported_value"
    with pytest.raises(NotCacheable):
        parse_chat_request(
            json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}).encode()
        )


@pytest.mark.parametrize(
    "fields", [{"echo": 1}, {"echo": "yes"}, {"return_token_ids": True}, {"prompt_logprobs": 0}]
)
def test_answers_quoting_the_prompt_however_asked(fields: dict[str, object]) -> None:
    assert parse_completions_request(body(**fields)).quotes_prompt
    assert not parse_completions_request(body(echo=False, return_token_ids=None)).quotes_prompt
