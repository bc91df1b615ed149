"""Streams: SSE framing, what makes a stream unstorable, and how a stored answer is replayed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc.errors import NotStorable
from extproc.protocol.completion import saved_tokens
from extproc.protocol.openai import (
    parse_json_completion,
    parse_sse_completion,
    render_completion,
    render_sse,
)
from extproc.protocol.sse import iter_sse_events
from tests.support.vllm import FIXTURES, accumulate, stream_body, without_id


def chunks_of(sse: bytes) -> list[dict[str, Any]]:
    """The chunk objects of an SSE body (``[DONE]`` excluded), read by our SSE reader."""
    events = list(iter_sse_events(sse.decode()))
    assert events[-1].data == "[DONE]"
    return [json.loads(e.data) for e in events[:-1]]


def sse(*payloads: str, end: str = "\n") -> bytes:
    """An SSE body of ``data:`` events."""
    return "".join(f"data: {p}{end}{end}" for p in payloads).encode()


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0) -> str:
    """One chat.completion.chunk as JSON text (non-ASCII left raw, as vLLM writes it)."""
    body = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    body["choices"] = [{"index": index, "delta": delta, "finish_reason": finish}]
    return json.dumps(body, ensure_ascii=False)


# --- issue #20 item 5: only CR, LF and CRLF end a line ---------------------------------------


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"])
@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_unicode_line_separators_inside_json_do_not_split_an_event(separator: str, end: str) -> None:
    text = f"one{separator}two"
    raw = sse(chunk({"role": "assistant", "content": text}), chunk({}, "stop"), "[DONE]", end=end)
    assert separator.encode() in raw or separator < " "  # sent raw (control characters are escaped)
    stored = parse_sse_completion(raw)
    assert stored["choices"][0]["message"]["content"] == text


def test_rendered_sse_escapes_line_separators_for_naive_readers() -> None:
    stored = parse_json_completion(json.dumps(FIXTURES["usage_details"]["json"], ensure_ascii=False).encode())
    out = render_sse(stored, include_usage=True, piece_chars=4)
    assert not any(c.encode() in out for c in ("\u2028", "\u2029", "\x85"))
    # even str.splitlines() keeps every event whole
    data = [line[6:] for line in out.decode().splitlines() if line.startswith("data: ")]
    assert all(json.loads(d) for d in data[:-1]) and data[-1] == "[DONE]"
    assert without_id(parse_sse_completion(out)) == without_id(stored)


def test_sse_reader_follows_the_spec() -> None:
    body = "\ufeff: comment\r\nid: 7\r\nretry: 10\r\ndata:a\r\ndata:  b\r\n\r\nevent: ping\n\ndata: c"
    events = list(iter_sse_events(body))
    assert [(e.event, e.data) for e in events] == [("", "a\n b"), ("ping", ""), ("", "c")]


# --- issue #20 item 7: any error event makes the stream unstorable ---------------------------


@pytest.mark.parametrize(
    "error",
    [
        'event: error\ndata: {"message":"upstream overloaded","code":503}\n\n',  # no "error" key
        "event: error\n\n",  # no data at all
        'event: error\ndata: {"error":{"message":"x"}}\n\n',
        'data: {"object":"error","message":"CUDA out of memory","type":"InternalServerError","code":500}\n\n',
        'data: {"error":{"message":"overloaded","code":503}}\n\n',
        'data: {"type":"error","error":{"type":"overloaded_error"}}\n\n',
    ],
)
def test_error_events_mid_stream_make_it_unstorable(error: str) -> None:
    head = sse(chunk({"role": "assistant", "content": "partial"}))
    tail = sse(chunk({"content": " answer"}), chunk({}, "stop"), "[DONE]")
    with pytest.raises(NotStorable) as info:
        parse_sse_completion(head + error.encode() + tail)
    assert info.value.reason == "error_body"


def test_other_named_events_are_not_replayable() -> None:
    raw = sse(chunk({"role": "assistant", "content": "hi"}), chunk({}, "stop"))
    with pytest.raises(NotStorable) as info:
        parse_sse_completion(raw + b"event: progress\ndata: {}\n\ndata: [DONE]\n\n")
    assert info.value.reason == "unparseable"
    ok = raw + b"event: message\ndata: " + chunk({"content": "!"}).encode() + b"\n\ndata: [DONE]\n\n"
    assert parse_sse_completion(ok)["choices"][0]["message"]["content"] == "hi!"


# --- the vLLM shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_vllm_json_is_stored_and_served_unchanged(name: str) -> None:
    doc = FIXTURES[name]
    n = len(doc["json"]["choices"])
    stored = parse_json_completion(json.dumps(doc["json"], ensure_ascii=False).encode(), n)
    assert without_id(json.loads(render_completion(stored))) == without_id(doc["json"])
    replay = chunks_of(render_sse(stored, include_usage=True))
    assert without_id(accumulate(replay)) == without_id(doc["json"])  # read as the SDK reads it


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_vllm_stream_is_stored_as_it_adds_up(name: str) -> None:
    doc = FIXTURES[name]
    n = len(doc["json"]["choices"])
    stored = parse_sse_completion(stream_body(doc["stream"], include_usage=True), n)
    expected = accumulate(doc["stream"])
    assert without_id(stored) == without_id(expected)
    assert without_id(json.loads(render_completion(stored))) == without_id(expected)
    assert without_id(accumulate(chunks_of(render_sse(stored, include_usage=True)))) == without_id(expected)


def test_reasoning_is_streamed_before_content_under_both_names() -> None:
    stored = parse_sse_completion(stream_body(FIXTURES["reasoning_both"]["stream"], include_usage=True))
    message = stored["choices"][0]["message"]
    assert message["reasoning"] == message["reasoning_content"] != ""
    kinds = []
    for c in chunks_of(render_sse(stored, include_usage=False, piece_chars=8)):
        delta = c["choices"][0]["delta"]
        kinds += [k for k in ("reasoning", "reasoning_content", "content") if delta.get(k)]
    assert kinds.index("content") > max(i for i, k in enumerate(kinds) if k != "content")
    assert "reasoning" in kinds and "reasoning_content" in kinds


def test_logprobs_go_with_the_content_deltas_of_their_tokens() -> None:
    stored = parse_sse_completion(stream_body(FIXTURES["logprobs"]["stream"], include_usage=False))
    content_chunks = [
        c["choices"][0]
        for c in chunks_of(render_sse(stored, False, piece_chars=4))
        if c["choices"][0]["delta"].get("content")
    ]
    assert len(content_chunks) > 1
    for entry in content_chunks:
        tokens = entry["logprobs"]["content"]
        assert "".join(t["token"] for t in tokens) == entry["delta"]["content"]


def test_tool_calls_replay_ids_and_names_then_argument_fragments_in_order() -> None:
    stored = parse_sse_completion(stream_body(FIXTURES["tool_calls"]["stream"], include_usage=False))
    deltas = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks_of(render_sse(stored, False, piece_chars=5))
        if c["choices"][0]["delta"].get("tool_calls")
    ]
    calls = stored["choices"][0]["message"]["tool_calls"]
    for i, call in enumerate(calls):
        mine = [d for d in deltas if d["index"] == i]
        assert mine[0]["id"] == call["id"] and mine[0]["function"]["name"] == call["function"]["name"]
        assert all("id" not in d for d in mine[1:])
        assert "".join(d["function"]["arguments"] for d in mine) == call["function"]["arguments"]


def test_n2_choices_are_interleaved_and_keep_stop_reason() -> None:
    stored = parse_sse_completion(stream_body(FIXTURES["n2"]["stream"], include_usage=True), 2)
    assert [c["stop_reason"] for c in stored["choices"]] == [None, "\n\n"]
    order = [c["choices"][0]["index"] for c in chunks_of(render_sse(stored, False, piece_chars=3))]
    assert order[:4] == [0, 1, 0, 1]
    finals = [
        c["choices"][0] for c in chunks_of(render_sse(stored, False)) if c["choices"][0]["finish_reason"]
    ]
    assert [(f["index"], f["stop_reason"]) for f in finals] == [(0, None), (1, "\n\n")]


def test_usage_with_details_is_replayed_only_when_asked_for() -> None:
    stored = parse_json_completion(json.dumps(FIXTURES["usage_details"]["json"]).encode())
    with_usage = chunks_of(render_sse(stored, include_usage=True))
    assert with_usage[-1]["choices"] == [] and with_usage[-1]["usage"] == stored["usage"]
    assert all("usage" not in c for c in chunks_of(render_sse(stored, include_usage=False)))
    first = with_usage[0]
    assert first["kv_transfer_params"] == stored["kv_transfer_params"]
    assert all(c["system_fingerprint"] == "fp_vllm_0_10_1" for c in with_usage)


# --- entries stored by earlier versions ------------------------------------------------------

OLD_STREAM_STORED = {  # what parse_sse_completion stored before: content defaulted, padded tool calls
    "id": "chatcmpl-old",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            "finish_reason": "tool_calls",
            "logprobs": {"content": []},
        }
    ],
}
OLD_JSON_STORED = {  # an OpenAI answer stored as it came, without usage
    "id": "chatcmpl-old2",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
}


@pytest.mark.parametrize("old", [OLD_STREAM_STORED, OLD_JSON_STORED])
def test_entries_of_the_old_stored_shape_are_still_served(old: dict[str, Any]) -> None:
    assert without_id(json.loads(render_completion(old))) == without_id(old)
    replay = render_sse(old, include_usage=True)
    chunks = chunks_of(replay)
    assert chunks[-1]["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    back = parse_sse_completion(replay)
    back.pop("usage")
    assert without_id(back) == without_id(old)


def test_saved_tokens_come_from_the_stored_usage() -> None:
    saved = saved_tokens(FIXTURES["usage_details"]["json"])
    assert saved is not None and (saved.prompt, saved.completion, saved.total) == (1200, 26, 1226)
    assert saved_tokens(OLD_JSON_STORED) is None
    assert saved_tokens({"usage": {"prompt_tokens": True, "completion_tokens": -1}}) is None


def test_openai_obfuscation_padding_is_not_part_of_the_answer() -> None:
    """OpenAI pads each chunk (``obfuscation``) to hide token lengths: kept, a JSON hit carried a
    top-level field no chat.completion has."""
    padded = [json.dumps(json.loads(chunk(d, f)) | {"obfuscation": "q7"}) for d, f in
              [({"role": "assistant", "content": "Hi"}, None), ({}, "stop")]]  # fmt: skip
    stored = parse_sse_completion(sse(*padded, "[DONE]"))
    assert "obfuscation" not in stored and "obfuscation" not in json.loads(render_completion(stored))


def test_an_answer_with_expiring_audio_is_not_stored() -> None:
    message = {"role": "assistant", "content": None, "audio": {"id": "audio_1", "expires_at": 1, "data": "x"}}
    body = {"id": "c", "object": "chat.completion", "created": 1, "model": "m"}
    body["choices"] = [{"index": 0, "message": message, "finish_reason": "stop"}]
    with pytest.raises(NotStorable) as info:
        parse_json_completion(json.dumps(body).encode())
    assert info.value.reason == "audio"


def test_an_azure_stream_keeps_the_model_its_first_chunk_leaves_blank() -> None:
    """Azure opens a stream with a prompt-filter chunk: no choices, blank id and model, created 0."""
    opening = json.dumps(
        {"id": "", "object": "", "created": 0, "model": "", "choices": [], "prompt_filter_results": []}
    )
    real = {"model": "gpt-4o-2024-08-06", "id": "chatcmpl-9", "created": 7}
    body = [json.dumps(json.loads(chunk(d, f)) | real)
            for d, f in [({"role": "assistant", "content": "Hi"}, None), ({}, "stop")]]  # fmt: skip
    stored = parse_sse_completion(sse(opening, *body, "[DONE]"))
    assert (stored["model"], stored["id"], stored["created"]) == ("gpt-4o-2024-08-06", "chatcmpl-9", 7)
    assert stored["choices"][0]["message"]["content"] == "Hi"
