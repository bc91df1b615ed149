"""The stateless Responses format: identity, what is not cacheable, storing and replaying events."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extproc.errors import NotCacheable, NotStorable
from extproc.protocol.completion import SavedTokens, saved_tokens
from extproc.protocol.responses import (
    parse_json_response,
    parse_responses_request,
    parse_sse_response,
    render_response,
    render_response_sse,
)
from extproc.protocol.sse import iter_sse_data


def body(**fields: Any) -> bytes:
    """A Responses request body (stateless unless the fields say otherwise)."""
    return json.dumps({"model": "m", "input": "Say hi", "store": False, **fields}).encode()


def test_identity_of_the_input_forms() -> None:
    short = parse_responses_request(body())
    as_item = parse_responses_request(body(input=[{"type": "message", "role": "user", "content": "Say hi"}]))
    as_parts = parse_responses_request(
        body(input=[{"role": "user", "content": [{"type": "input_text", "text": "Say hi"}]}])
    )
    assert short.prompt == as_item.prompt == as_parts.prompt == "Say hi"
    assert short.fingerprint == as_item.fingerprint == as_parts.fingerprint
    assert parse_responses_request(body(instructions="Be brief")).fingerprint != short.fingerprint
    assert parse_responses_request(body(stream=True)).stream


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"store": True}, "stateful"),
        ({"store": None}, "stateful"),  # the API stores by default
        ({"previous_response_id": "resp_1"}, "stateful"),
        ({"background": True}, "stateful"),
        ({"input": [{"role": "assistant", "content": "x"}]}, "no_user_message"),
        ({"input": 5}, "bad_messages"),
        ({"stream": 1}, "unsupported_value"),  # vLLM streams on it
    ],
)
def test_not_cacheable(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(NotCacheable) as info:
        parse_responses_request(body(**fields))
    assert info.value.reason == reason


def response(status: str = "completed", **extra: Any) -> dict[str, Any]:
    """A response object with one message."""
    part = {"type": "output_text", "text": "Hello there, general Kenobi.", "annotations": []}
    item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed", "content": [part]}
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "status": status,
        "model": "m",
        "output": [item],
    } | extra


def test_replay_round_trip() -> None:
    stored = parse_json_response(json.dumps(response()).encode())
    assert json.loads(render_response(stored))["id"] != "resp_1"
    stream = render_response_sse(stored, piece_chars=6)
    events = [json.loads(p) for p in iter_sse_data(stream)]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "Hello there, general Kenobi."
    assert parse_sse_response(stream)["output"] == stored["output"]
    text_events = [e for e in events if e["type"].startswith("response.output_text.")]
    assert all(e["logprobs"] == [] for e in text_events)  # required by the SDK's types


def test_a_hit_is_completed_after_it_was_created() -> None:
    stored = parse_json_response(json.dumps(response(created_at=1, completed_at=5)).encode())
    served = json.loads(render_response(stored))
    assert served["completed_at"] == served["created_at"] > 5
    events = [json.loads(p) for p in iter_sse_data(render_response_sse(stored))]
    assert events[0]["response"]["completed_at"] is None  # response.created: not completed yet
    assert events[-1]["response"]["completed_at"] == events[-1]["response"]["created_at"]


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        (response("incomplete", incomplete_details={"reason": "max_output_tokens"}), "truncated"),
        (response("incomplete", incomplete_details={"reason": "content_filter"}), "content_filter"),
        (response("failed", error={"message": "x"}), "error_body"),
        (response(output=[]), "no_choices"),
    ],
)
def test_unfinished_responses_are_not_stored(obj: dict[str, Any], reason: str) -> None:
    with pytest.raises(NotStorable) as info:
        parse_json_response(json.dumps(obj).encode())
    assert info.value.reason == reason


def test_a_stream_without_completed_is_not_stored() -> None:
    stream = render_response_sse(response())
    cut = stream[: stream.index(b"event: response.completed")]
    with pytest.raises(NotStorable) as info:
        parse_sse_response(cut)
    assert info.value.reason == "stream_incomplete"


def test_a_done_trailer_after_the_completed_event_is_not_an_event() -> None:
    stream = render_response_sse(response()) + b"data: [DONE]\n\n"
    assert parse_sse_response(stream)["status"] == "completed"


def test_text_no_utf8_can_carry_is_served_escaped() -> None:
    # An emoji whose halves came as two \u escapes in two stream events, and a line separator.
    text = "ok \ud83d\ude00 a\u2028b"
    stored = response()
    stored["output"][0]["content"][0]["text"] = text
    as_json = render_response(stored)
    as_stream = render_response_sse(stored, piece_chars=2)
    for served in (as_json, as_stream):
        assert "\u2028" not in served.decode("utf-8")  # splitlines readers cannot cut an event
    assert json.loads(as_json)["output"][0]["content"][0]["text"] == "ok \U0001f600 a\u2028b"
    assert parse_sse_response(as_stream)["output"] == json.loads(as_json)["output"]


def test_saved_tokens_read_the_responses_usage() -> None:
    usage = {"input_tokens": 12, "output_tokens": 6, "total_tokens": 18}
    assert saved_tokens(response(usage=usage)) == SavedTokens(12, 6)
    assert saved_tokens(response(usage={"total_tokens": 18})) is None


def test_a_function_call_streams_its_arguments_as_the_api_does() -> None:
    call = {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "c1",
        "name": "weather",
        "arguments": '{"city":"Paris"}',
    }
    stored = parse_json_response(json.dumps(response(output=[call])).encode())
    stream = render_response_sse(stored, piece_chars=5)
    events = [json.loads(p) for p in iter_sse_data(stream)]
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert added["item"]["arguments"] == "" and added["item"]["status"] == "in_progress"
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(deltas) == call["arguments"] and len(deltas) > 1
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert done["arguments"] == call["arguments"] and done["item_id"] == "fc_1"
    assert parse_sse_response(stream)["output"] == stored["output"]


def test_a_stream_hit_streams_reasoning_refusals_logprobs_and_annotations() -> None:
    """A client building its view from the deltas sees what the upstream's stream showed."""
    reasoning = {
        "id": "rs_1",
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "**Thinking** about greetings."}],
        "content": [{"type": "reasoning_text", "text": "The user says hi."}],
    }
    tokens = [{"token": t, "logprob": -0.1, "top_logprobs": []} for t in ("Hel", "lo", "!")]
    link = {
        "type": "url_citation",
        "url": "https://example.com",
        "start_index": 0,
        "end_index": 5,
        "title": "x",
    }
    text = {"type": "output_text", "text": "Hello!", "annotations": [link], "logprobs": tokens}
    refusal = {"type": "refusal", "refusal": "I can't help with that."}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed"}
    custom = {"id": "ct_1", "type": "custom_tool_call", "call_id": "c1", "name": "sh", "input": "ls -la /tmp"}
    stored = response(output=[reasoning, message | {"content": [text, refusal]}, custom])
    events = [json.loads(p) for p in iter_sse_data(render_response_sse(stored, piece_chars=4))]

    def joined(kind: str) -> str:
        return "".join(e["delta"] for e in events if e["type"] == kind)

    assert joined("response.reasoning_summary_text.delta") == "**Thinking** about greetings."
    assert joined("response.reasoning_text.delta") == "The user says hi."
    assert joined("response.output_text.delta") == "Hello!"
    assert joined("response.refusal.delta") == "I can't help with that."
    assert joined("response.custom_tool_call_input.delta") == "ls -la /tmp"
    spelled = [t for e in events if e["type"] == "response.output_text.delta" for t in e["logprobs"]]
    assert spelled == tokens
    done = next(e for e in events if e["type"] == "response.output_text.done")
    assert done["logprobs"] == tokens
    assert [e["annotation"] for e in events if e["type"] == "response.output_text.annotation.added"] == [link]
    added = next(
        e for e in events if e["type"] == "response.output_item.added" and e["item"]["type"] == "reasoning"
    )
    assert added["item"]["summary"] == []  # streamed, not given whole at once
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["response"]["output"] == stored["output"]


def test_the_earlier_user_turns_are_read_as_chat_reads_them() -> None:
    """ "And in London?" after "What's the weather in Paris today?" was cached on /v1/responses (the
    freshness check read the last turn only) and not on chat."""
    turns: list[dict[str, Any]] = [{"role": "user", "content": f"turn {i}"} for i in range(6)]
    turns[4] = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}]}
    turns.insert(2, {"role": "assistant", "content": "an answer"})
    req = parse_responses_request(
        json.dumps(
            {"model": "m", "store": False, "input": [*turns, {"role": "user", "content": "now?"}]}
        ).encode()
    )
    assert req.earlier == ("turn 2", "turn 3", "a", "turn 5")
    assert (
        parse_responses_request(json.dumps({"model": "m", "store": False, "input": "hi"}).encode()).earlier
        == ()
    )
