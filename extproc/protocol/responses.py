"""The ``POST /v1/responses`` format, stateless requests only: parse, validate, replay.

Only a request that leaves no state behind is cacheable: ``store: false`` (the API stores by
default, and a cached answer would have no server-side object to continue from), no
``previous_response_id``, no ``conversation``, not ``background``.  The prompt is ``input`` (a
string, or the text of the last user item); everything else is the fingerprint, with the
endpoint in it.  A stream is stored from its ``response.completed`` event and replayed as the
standard event sequence (created, in_progress, per item added / parts / text deltas / done,
completed), with fresh ids and sequence numbers.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

from extproc.errors import NotCacheable, NotStorable
from extproc.protocol.openai import (
    EARLIER_TURNS,
    IGNORED_FIELDS,
    ChatRequest,
    _hash,
    _split_content,
    _text_of,
    canonical_json,
    check_model,
    client_fields,
    load_request,
    normalize_text,
    quotes_prompt,
    raw_prompt_identity,
)
from extproc.protocol.responses_stream import item_events
from extproc.protocol.sse import dump_json, iter_sse_data

RESPONSES_PATH = "/v1/responses"
_STATEFUL = ("previous_response_id", "conversation")
CLIENT_TOOLS = frozenset({"function", "custom"})
"""Tools the client runs (the answer asks it to); the server runs any other type itself (web and
file search, code interpreter, MCP servers, image generation): a repeat must run them again."""
ECHOED_FIELDS = frozenset(
    {
        "background",
        "conversation",
        "instructions",
        "max_output_tokens",
        "max_tool_calls",
        "metadata",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt",
        "prompt_cache_key",
        "prompt_cache_retention",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "store",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    }
)
"""Request fields a ``response`` object repeats: ``fingerprint_ignore_fields`` never leaves them
out here, or a hit would carry another caller's ``user`` or ``metadata``."""


def parse_responses_request(body: bytes, ignore_fields: Iterable[str] = IGNORED_FIELDS) -> ChatRequest:
    """Parse a stateless Responses request into a :class:`ChatRequest`, else :class:`NotCacheable`."""
    data = load_request(body)
    model = check_model(data.get("model"))
    if data.get("store") is not False or data.get("background") or any(data.get(k) for k in _STATEFUL):
        raise NotCacheable("stateful")
    prompt_ref = data.get("prompt")  # a stored prompt template: its latest version can change
    if prompt_ref is not None and not (isinstance(prompt_ref, dict) and prompt_ref.get("version")):
        raise NotCacheable("stateful")
    tools = data.get("tools")
    if tools and any(not isinstance(t, dict) or t.get("type") not in CLIENT_TOOLS for t in _listed(tools)):
        raise NotCacheable("server_tools")
    items = data.get("input")
    if isinstance(items, str):  # the API's shorthand for one user message
        items = [{"role": "user", "content": items}]
    if isinstance(items, list) and items and all(isinstance(i, dict) for i in items):
        # {"type": "message", "role": …} and {"role": …} are one item: drop the default type.
        items = [{k: v for k, v in i.items() if (k, v) != ("type", "message")} for i in items]
        last = next((i for i in range(len(items) - 1, -1, -1) if items[i].get("role") == "user"), None)
        if last is None:
            raise NotCacheable("no_user_message")
        text, rest = _split_content(_as_chat_content(items[last].get("content")))
        placeholder = {k: v for k, v in items[last].items() if k != "content"}
        identity_input = [*items[:last], placeholder | {"content": {"$last_user_text": True, "rest": rest}}]
        identity_input += items[last + 1 :]
        # The turns before, as chat reads them: "And in London?" after a weather question is one.
        earlier = [
            _text_of(_as_chat_content(i.get("content"))) for i in items[:last] if i.get("role") == "user"
        ]
    else:
        raise NotCacheable("bad_messages")
    prompt = normalize_text(text)
    if not prompt:
        raise NotCacheable("empty_prompt")
    quoted = quotes_prompt(data)
    identity = client_fields(data, (*(set(ignore_fields) - ECHOED_FIELDS), "model", "input"))
    identity["input"] = identity_input
    if quoted and (raw := raw_prompt_identity(text, prompt, quoted)):
        identity["$raw_prompt"] = raw  # the answer quotes the text as sent
    canonical = canonical_json(identity)
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):  # vLLM streams on 1 or "true"
        raise NotCacheable("unsupported_value")
    fingerprint = _hash("responses", canonical)
    return ChatRequest(
        model,
        prompt,
        fingerprint,
        stream is True,
        False,
        quotes_prompt=quoted,
        earlier=tuple(earlier[-EARLIER_TURNS:]),
    )


def _listed(tools: Any) -> list[Any]:
    return tools if isinstance(tools, list) else [tools]


def _as_chat_content(content: Any) -> Any:
    """Responses content parts (``input_text``) in the chat shape ``_split_content`` reads."""
    if not isinstance(content, list):
        return content
    return [
        dict(p, type="text") if isinstance(p, dict) and p.get("type") == "input_text" else p for p in content
    ]


def validate_response(response: Any, choices_expected: int = 1) -> dict[str, Any]:
    """Check that a ``response`` object is completed and safe to serve again."""
    if not isinstance(response, dict) or response.get("object") != "response":
        raise NotStorable("unparseable")
    if response.get("error"):
        raise NotStorable("error_body")
    status = response.get("status")
    if status == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        raise NotStorable("content_filter" if reason == "content_filter" else "truncated")
    if status != "completed":
        raise NotStorable("incomplete")
    if not isinstance(response.get("output"), list) or not response["output"]:
        raise NotStorable("no_choices")
    return response


def parse_json_response(body: bytes, choices_expected: int = 1) -> dict[str, Any]:
    """Parse and validate a non-streaming ``response`` body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotStorable("unparseable") from exc
    if isinstance(data, dict) and "error" in data and data.get("object") != "response":
        raise NotStorable("error_body")
    return validate_response(data)


def parse_sse_response(body: bytes, choices_expected: int = 1) -> dict[str, Any]:
    """The ``response`` of a complete stream's ``response.completed`` event."""
    try:
        payloads = list(iter_sse_data(body))
    except UnicodeDecodeError as exc:
        raise NotStorable("unparseable") from exc
    for payload in reversed(payloads):
        if payload.strip() == "[DONE]":  # a chat-style trailer some proxies add: not an event
            continue
        try:
            event = json.loads(payload)
        except ValueError as exc:
            raise NotStorable("unparseable") from exc
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "response.completed":
            return validate_response(event.get("response"))
        if kind in ("response.failed", "error"):
            raise NotStorable("error_body")
        if kind == "response.incomplete":
            return validate_response(event.get("response"))
    raise NotStorable("stream_incomplete")


def render_response(stored: dict[str, Any]) -> bytes:
    """The stored ``response`` as JSON with a fresh ``id`` and ``created_at``."""
    return dump_json(_fresh(stored))


def _fresh(stored: dict[str, Any]) -> dict[str, Any]:
    now = int(time.time())
    fresh = dict(stored, id="resp_" + secrets.token_hex(24), created_at=now)
    if stored.get("completed_at") is not None:  # never completed before it was created
        fresh["completed_at"] = now
    return fresh


def render_response_sse(stored: dict[str, Any], include_usage: bool = False, piece_chars: int = 64) -> bytes:
    """The stored ``response`` as the standard Responses event stream."""
    final = _fresh(stored)
    events: list[dict[str, Any]] = []
    started = dict(final, status="in_progress", output=[], usage=None)
    if "completed_at" in started:
        started["completed_at"] = None
    events += [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
    ]
    for index, item in enumerate(final["output"]):
        events += item_events(index, item, piece_chars)
    events.append({"type": "response.completed", "response": final})
    parts = []
    for seq, event in enumerate(events):
        data = dump_json(dict(event, sequence_number=seq))  # lone surrogates and U+2028 stay escaped
        parts.append(b"event: " + event["type"].encode() + b"\ndata: " + data + b"\n\n")
    return b"".join(parts)
