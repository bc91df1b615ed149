"""Request identity, fingerprints, exact keys, SSE parsing and synthesis."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc.errors import NotCacheable, NotStorable
from extproc.protocol.openai import (
    exact_key,
    normalize_text,
    parse_chat_request,
    parse_json_completion,
    parse_sse_completion,
    partition_key,
    render_completion,
    render_sse,
    scope_from_authorization,
)


def body(**fields: Any) -> bytes:
    """A chat request body with defaults."""
    data: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "Hello there"}]}
    data.update(fields)
    return json.dumps(data).encode()


def test_prompt_is_last_user_message_normalized() -> None:
    req = parse_chat_request(
        body(
            messages=[
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": "  What is this?\r\n"},
            ]
        )
    )
    assert req.prompt == "What is this?"
    assert req.model == "m"
    assert req.earlier == ("first",)  # the turns before it (their time words count too)


def test_earlier_user_turns_are_the_latest_few_texts() -> None:
    turns: list[dict[str, Any]] = [{"role": "user", "content": f"turn {i}"} for i in range(6)]
    turns[4] = {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url"}]}
    turns[3] = {"role": "user", "content": 7}  # not text: no words to read, not an error
    req = parse_chat_request(body(messages=[*turns, {"role": "user", "content": "now?"}]))
    assert req.earlier == ("turn 2", "", "a", "turn 5")


def test_normalization_keeps_whitespace_that_can_be_meaning() -> None:
    """Indentation, runs inside a line and line structure stay; trailing spaces and CRLF do not."""
    assert normalize_text("x = 'a    b'; print(len(x))") != normalize_text("x = 'a b'; print(len(x))")
    indented = "def f():\n    return 1"
    assert normalize_text(indented) != normalize_text("def f():\nreturn 1")
    assert normalize_text("print(1)\nprint(2)") != normalize_text("print(1) print(2)")
    assert normalize_text("\n\ndef f():  \r\n    return 1   \n\n") == indented
    assert normalize_text("cafe\u0301 ") == "caf\u00e9"
    assert normalize_text(" \n\t ") == ""


def test_whitespace_variants_of_code_have_their_own_exact_keys() -> None:
    def key(prompt: str) -> str:
        req = parse_chat_request(body(messages=[{"role": "user", "content": prompt}]))
        return exact_key(req.model, "global", req.fingerprint, req.prompt)

    assert key("x = 'a    b'") != key("x = 'a b'")
    assert key("if x:\n    y()") != key("if x:\ny()")
    assert key("What is Envoy?") == key("What is Envoy?  \n")


def test_fingerprint_ignores_only_last_user_text_and_stream_fields() -> None:
    base = parse_chat_request(body())
    assert (
        parse_chat_request(body(messages=[{"role": "user", "content": "Different text"}])).fingerprint
        == base.fingerprint
    )
    assert (
        parse_chat_request(body(stream=True, stream_options={"include_usage": True})).fingerprint
        == base.fingerprint
    )
    for change in (
        {"temperature": 0.5},
        {"max_tokens": 10},
        {"n": 2},
        {"seed": 1},
        {"stop": ["x"]},
        {"tools": [{"type": "function"}]},
        {"tool_choice": "auto"},
        {"response_format": {"type": "json_object"}},
        {"top_p": 0.1},
        {"logprobs": True},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Hello there"}]},
        {"messages": [{"role": "user", "name": "bob", "content": "Hello there"}]},
    ):
        assert parse_chat_request(body(**change)).fingerprint != base.fingerprint, change


def test_fingerprint_ignore_list_is_configurable() -> None:
    a = parse_chat_request(body(user="u1"), ignore_fields=("stream", "stream_options", "user"))
    b = parse_chat_request(body(user="u2"), ignore_fields=("stream", "stream_options", "user"))
    assert a.fingerprint == b.fingerprint
    assert parse_chat_request(body(user="u1")).fingerprint != parse_chat_request(body(user="u2")).fingerprint


def test_content_parts_text_is_embedded_images_go_to_fingerprint() -> None:
    parts = [{"type": "text", "text": "Describe"}, {"type": "text", "text": "this"}]
    with_image = [*parts, {"type": "image_url", "image_url": {"url": "http://x/1.png"}}]
    other_image = [*parts, {"type": "image_url", "image_url": {"url": "http://x/2.png"}}]
    a = parse_chat_request(body(messages=[{"role": "user", "content": with_image}]))
    b = parse_chat_request(body(messages=[{"role": "user", "content": other_image}]))
    assert a.prompt == "Describe\nthis"  # each text part its own line
    assert a.fingerprint != b.fingerprint


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{oops", "bad_json"),
        (b"[1]", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "no_model"),
        (json.dumps({"model": "m"}).encode(), "bad_messages"),
        (json.dumps({"model": "m", "messages": "hi"}).encode(), "bad_messages"),
        (json.dumps({"model": "m", "messages": []}).encode(), "bad_messages"),
        (json.dumps({"model": "m", "messages": ["x"]}).encode(), "bad_messages"),
        (
            json.dumps({"model": "m", "messages": [{"role": "system", "content": "x"}]}).encode(),
            "no_user_message",
        ),
        (
            json.dumps({"model": "m", "messages": [{"role": "user", "content": "  "}]}).encode(),
            "empty_prompt",
        ),
        (json.dumps({"model": "m", "messages": [{"role": "user", "content": 5}]}).encode(), "bad_messages"),
    ],
)
def test_not_cacheable_reasons(raw: bytes, reason: str) -> None:
    with pytest.raises(NotCacheable) as info:
        parse_chat_request(raw)
    assert info.value.reason == reason


def test_exact_and_partition_keys_separate_every_part() -> None:
    k = exact_key("m", "global", "f", "p")
    assert (
        len(
            {
                k,
                exact_key("m2", "global", "f", "p"),
                exact_key("m", "t", "f", "p"),
                exact_key("m", "global", "f2", "p"),
                exact_key("m", "global", "f", "p2"),
            }
        )
        == 5
    )
    # field boundaries are unambiguous
    assert exact_key("ab", "c", "f", "p") != exact_key("a", "bc", "f", "p")
    assert partition_key("m", "s", "f") != partition_key("m", "s2", "f")


def test_authorization_scope_is_a_hash() -> None:
    a = scope_from_authorization("Bearer sk-secret")
    assert a and "sk-secret" not in a
    assert a == scope_from_authorization("bearer sk-secret")
    assert a != scope_from_authorization("Bearer sk-other")
    assert scope_from_authorization(None) is None
    assert scope_from_authorization("Bearer ") is None


def completion(finish: str = "stop", choices: int = 1) -> dict[str, Any]:
    """A chat.completion."""
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": f"hi {i}"}, "finish_reason": finish}
            for i in range(choices)
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


def test_json_completion_validation() -> None:
    assert (
        parse_json_completion(json.dumps(completion()).encode())["choices"][0]["message"]["content"] == "hi 0"
    )
    for bad, reason in [
        (completion("length"), "truncated"),
        (completion("content_filter"), "content_filter"),
        (completion(None), "incomplete"),
        ({"error": {"message": "x"}}, "error_body"),
        ({"choices": []}, "no_choices"),
    ]:
        with pytest.raises(NotStorable) as info:
            parse_json_completion(json.dumps(bad).encode())
        assert info.value.reason == reason
    with pytest.raises(NotStorable):
        parse_json_completion(b"not json")
    with pytest.raises(NotStorable):
        parse_json_completion(json.dumps(completion(choices=1)).encode(), choices_expected=2)
    assert len(parse_json_completion(json.dumps(completion(choices=2)).encode(), 2)["choices"]) == 2


def test_sse_round_trip_preserves_content_usage_and_tool_calls() -> None:
    stored = completion()
    stored["choices"][0]["message"]["content"] = "A longer answer " * 20
    sse = render_sse(stored, include_usage=True, piece_chars=7)
    rebuilt = parse_sse_completion(sse)
    assert rebuilt["choices"][0]["message"]["content"] == stored["choices"][0]["message"]["content"]
    assert rebuilt["usage"] == stored["usage"]
    assert sse.endswith(b"data: [DONE]\n\n")

    calls = completion("tool_calls")
    calls["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    again = parse_sse_completion(render_sse(calls, include_usage=False))
    assert again["choices"][0]["message"]["tool_calls"] == calls["choices"][0]["message"]["tool_calls"]
    assert again["choices"][0]["finish_reason"] == "tool_calls"


def test_sse_parse_incremental_tool_call_deltas_and_crlf() -> None:
    chunks = [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "c1",
                                "type": "function",
                                "function": {"name": "f", "arguments": ""},
                            }
                        ],
                    },
                }
            ]
        },
        {
            "choices": [
                {"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}}
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]
    raw = b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks) + b"data: [DONE]\r\n\r\n"
    out = parse_sse_completion(raw)
    assert out["choices"][0]["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}


@pytest.mark.parametrize(
    "raw",
    [
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n',  # no [DONE]
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n',  # no finish_reason
        b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"length"}]}\n\n'
        b"data: [DONE]\n\n",
        b'data: {"error":{"message":"overloaded"}}\n\ndata: [DONE]\n\n',
        b"data: {broken\n\ndata: [DONE]\n\n",
        b"",
    ],
)
def test_sse_incomplete_or_bad_streams_are_not_storable(raw: bytes) -> None:
    with pytest.raises(NotStorable):
        parse_sse_completion(raw)


def test_rendered_completion_has_fresh_id_and_created() -> None:
    stored = completion()
    out = json.loads(render_completion(stored))
    assert out["id"] != "x" and out["id"].startswith("chatcmpl-")
    assert out["created"] > 1
    assert out["choices"] == stored["choices"]


def test_rendered_sse_shape() -> None:
    sse = render_sse(completion(choices=2), include_usage=False).decode()
    events = [e for e in sse.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishes == ["stop", "stop"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
