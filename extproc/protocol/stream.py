"""``chat.completion.chunk`` streams: read one into the stored form, and replay a stored answer as one.

Reading adds the deltas up as the OpenAI SDK does: text fragments are concatenated, tool calls
are merged by their ``index``, lists (``logprobs.content``) are appended, and a field sent only
as ``null`` is kept as ``null``. Every other field of a chunk, a choice or a delta is kept too.

Replaying sends what vLLM sends, per choice: a role delta, the reasoning deltas, the content
deltas (each with the log probabilities of its tokens), refusal deltas, the tool calls (id and
name first, then the argument fragments in order) and a final chunk with ``finish_reason`` and
``stop_reason``; several choices are interleaved; then the usage chunk when asked for, then
``data: [DONE]``. Reading a replay gives back the stored completion, apart from ``id`` and
``created``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import Any

from extproc.errors import NotStorable
from extproc.protocol.completion import TEXT_FIELDS, fresh_id, is_error_payload, validate_completion
from extproc.protocol.sse import DONE, iter_sse_events, sse_data

_MISSING: Any = object()


class _Parts(list[str]):
    """Text fragments of one field, joined once at the end (repeated ``+`` would be quadratic)."""


# --- reading a stream ----------------------------------------------------------------------


@dataclass
class StreamChoice:
    """One choice while its deltas arrive."""

    index: int
    message: dict[str, Any] = field(default_factory=dict)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)
    """Choice-level fields: ``finish_reason``, ``logprobs``, ``stop_reason``, vendor fields."""


def _latest(target: dict[str, Any], key: str, value: Any) -> None:
    """Keep the latest non-null value; ``null`` only stands until a value comes."""
    if value is not None or key not in target:
        target[key] = value


def _accumulate(target: dict[str, Any], key: str, value: Any) -> None:
    """Add one delta value to what has arrived so far, as the OpenAI SDK's accumulator does."""
    old = target.get(key)
    if old is None:
        target[key] = value
    elif value is None:
        return
    elif key in ("index", "type"):  # identifiers, never fragments
        target[key] = value
    elif isinstance(old, str | _Parts) and isinstance(value, str):
        parts = old if isinstance(old, _Parts) else _Parts([old])
        parts.append(value)
        target[key] = parts
    elif isinstance(old, dict) and isinstance(value, dict):
        for k, v in value.items():
            _accumulate(old, k, v)
    elif isinstance(old, list) and not isinstance(old, _Parts) and isinstance(value, list):
        old.extend(value)
    else:
        target[key] = value


def _merge_call(choice: StreamChoice, call: Any) -> None:
    if not isinstance(call, dict):
        raise NotStorable("unparseable")
    index = call.get("index")
    if not isinstance(index, int) or isinstance(index, bool):  # no index: each fragment is a whole call
        index = max(choice.calls, default=-1) + 1
    target = choice.calls.setdefault(index, {})
    for key, value in call.items():
        if key == "index":
            continue
        if key in ("id", "type"):  # sent once by OpenAI and vLLM; a repeat replaces, never appends
            if value or key not in target:
                target[key] = value
        else:
            _accumulate(target, key, value)


def _merge_delta(choice: StreamChoice, delta: dict[str, Any]) -> None:
    for key, value in delta.items():
        if key == "role":
            if isinstance(value, str):
                choice.message["role"] = value
        elif key == "tool_calls" and isinstance(value, list) and value:
            for call in value:
                _merge_call(choice, call)
        else:
            _accumulate(choice.message, key, value)


def _merge_choice(choices: dict[int, StreamChoice], raw: Any) -> None:
    if not isinstance(raw, dict):
        raise NotStorable("unparseable")
    index = raw.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise NotStorable("unparseable")
    choice = choices.setdefault(index, StreamChoice(index))
    for key, value in raw.items():
        if key == "index":
            continue
        if key == "delta":
            if isinstance(value, dict):
                _merge_delta(choice, value)
            elif value is not None:
                raise NotStorable("unparseable")
        elif key == "logprobs":
            _accumulate(choice.fields, key, value)
        elif isinstance(value, list) and isinstance(choice.fields.get(key), list):
            choice.fields[key].extend(value)  # per-step lists, e.g. vLLM's token_ids
        else:
            _latest(choice.fields, key, value)


def merge_chunk(head: dict[str, Any], choices: dict[int, StreamChoice], chunk: dict[str, Any]) -> None:
    """Fold one stream chunk into the completion so far (``head``) and its ``choices``."""
    for key, value in chunk.items():
        if key == "choices":
            if not isinstance(value, list | None):
                raise NotStorable("unparseable")
            for raw in value or ():
                _merge_choice(choices, raw)
        elif key in ("id", "created", "model"):
            head.setdefault(key, value)
        elif key == "object":
            continue
        elif key == "usage":
            if isinstance(value, dict):  # the latest counts (vLLM's continuous_usage_stats repeats it)
                head[key] = value
        else:
            _latest(head, key, value)


def joined(value: Any) -> Any:
    """``value`` with every :class:`_Parts` joined into its text."""
    if isinstance(value, _Parts):
        return "".join(value)
    if isinstance(value, dict):
        return {k: joined(v) for k, v in value.items()}
    if isinstance(value, list):
        return [joined(v) for v in value]
    return value


def _assemble_choice(choice: StreamChoice) -> dict[str, Any]:
    fields = dict(choice.fields)
    rest = dict(choice.message)
    message = {"role": rest.pop("role", "assistant"), "content": rest.pop("content", None), **rest}
    if choice.calls:
        message["tool_calls"] = [choice.calls[i] for i in sorted(choice.calls)]
    out: dict[str, Any] = {"index": choice.index, "message": message}
    if "logprobs" in fields:
        out["logprobs"] = fields.pop("logprobs")
    out["finish_reason"] = fields.pop("finish_reason", None)
    out.update(fields)
    return out


def stream_payloads(body: bytes) -> list[str]:
    """The data payloads of a complete, storable stream, ``[DONE]`` left out.

    The stream must end with ``data: [DONE]``. An ``event: error`` (any payload) or any other
    named event makes it unstorable: a replay could not reproduce it.
    """
    try:
        events = list(iter_sse_events(body.decode("utf-8")))
    except UnicodeDecodeError as exc:
        raise NotStorable("unparseable") from exc
    for event in events:
        if event.event == "error":
            raise NotStorable("error_body")
        if event.event not in ("", "message"):
            raise NotStorable("unparseable")
    if not events or events[-1].data.strip() != "[DONE]":
        raise NotStorable("stream_incomplete")
    return [event.data for event in events[:-1]]


def parse_sse_completion(body: bytes, choices_expected: int = 1) -> dict[str, Any]:
    """Rebuild the ``chat.completion`` a complete ``chat.completion.chunk`` stream adds up to.

    Every choice must have a finish_reason; an error-shaped payload makes the stream
    unstorable (see :func:`stream_payloads` for the framing rules).
    """
    payloads = stream_payloads(body)
    head: dict[str, Any] = {}
    choices: dict[int, StreamChoice] = {}
    try:
        for payload in payloads:
            chunk = json.loads(payload)
            if is_error_payload(chunk):
                raise NotStorable("error_body")
            if not isinstance(chunk, dict):
                raise NotStorable("unparseable")
            merge_chunk(head, choices, chunk)
        return validate_completion(joined(_assemble(head, choices)), choices_expected)
    except (ValueError, RecursionError) as exc:  # not JSON, or nested deeper than we can merge
        raise NotStorable("unparseable") from exc


def _assemble(head: dict[str, Any], choices: dict[int, StreamChoice]) -> dict[str, Any]:
    completion: dict[str, Any] = {
        "id": head.pop("id", ""),
        "object": "chat.completion",
        "created": head.pop("created", 0),
        "model": head.pop("model", ""),
        "choices": [_assemble_choice(choices[i]) for i in sorted(choices)],
    }
    usage = head.pop("usage", None)
    completion.update(head)
    if usage is not None:
        completion["usage"] = usage
    return completion


# --- replaying a stored completion ---------------------------------------------------------

COMPLETION_FIELDS = frozenset({"id", "object", "created", "model", "choices", "usage"})
"""Fields every completion has; any other top-level field is the upstream's own and kept."""
EVERY_CHUNK = ("service_tier", "system_fingerprint")
"""Completion fields repeated on every chunk, as OpenAI does; other extra fields go on the first."""
ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
"""The usage chunk of an answer stored without usage."""


def text_pieces(text: str, size: int) -> list[str]:
    """``text`` cut into pieces of ``size`` characters (a replayed stream's deltas)."""
    return [text[i : i + size] for i in range(0, len(text), size)]


def content_with_logprobs(content: str, tokens: list[Any], size: int) -> Iterator[tuple[str, list[Any]]]:
    """Content pieces, each with the log probabilities of its tokens.

    When the tokens spell the content, pieces end at token boundaries and carry exactly their
    tokens; otherwise (special tokens, reasoning tokens counted in) the tokens are spread over
    the pieces in order.
    """
    texts = [t.get("token") if isinstance(t, dict) else None for t in tokens]
    if all(isinstance(t, str) for t in texts) and "".join(texts) == content:
        group: list[Any] = []
        piece: list[str] = []
        length = 0
        for token, text in zip(tokens, texts, strict=True):
            group.append(token)
            piece.append(text)
            length += len(text)
            if length >= size:
                yield "".join(piece), group
                group, piece, length = [], [], 0
        if group:
            yield "".join(piece), group
        return
    pieces = text_pieces(content, size)
    n, p = len(tokens), len(pieces)
    for j, text in enumerate(pieces):
        yield text, tokens[j * n // p : (j + 1) * n // p]


def _tool_call_deltas(calls: list[dict[str, Any]], size: int) -> Iterator[dict[str, Any]]:
    for i, call in enumerate(calls):
        header: dict[str, Any] = {"index": i}
        arguments = ""
        for key, value in call.items():
            if key == "index":
                continue
            if key == "function" and isinstance(value, dict):
                function = dict(value)
                if isinstance(value.get("arguments"), str):
                    arguments, function["arguments"] = value["arguments"], ""
                header[key] = function
            else:
                header[key] = value
        yield {"tool_calls": [header]}
        for piece in text_pieces(arguments, size):
            yield {"tool_calls": [{"index": i, "function": {"arguments": piece}}]}


def _choice_chunks(choice: dict[str, Any], position: int, size: int) -> Iterator[dict[str, Any]]:
    """The ``choices`` entries that replay one stored choice, in order."""
    index = choice.get("index", position)
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    has_logprobs = "logprobs" in choice
    logprobs = choice.get("logprobs")

    def entry(delta: dict[str, Any], probs: Any = None) -> dict[str, Any]:
        out: dict[str, Any] = {"index": index, "delta": delta}
        if has_logprobs:
            out["logprobs"] = probs
        out["finish_reason"] = None
        return out

    role: dict[str, Any] = {"role": message.get("role", "assistant")}
    texts: dict[str, str] = {}
    calls: list[dict[str, Any]] = []
    for key, value in message.items():
        if key == "role":
            continue
        if key in TEXT_FIELDS and isinstance(value, str) and value:
            texts[key] = value
            if key == "content":  # the role delta opens the content, as vLLM and OpenAI do
                role["content"] = ""
        elif key == "tool_calls" and isinstance(value, list) and value:
            calls = [c if isinstance(c, dict) else {} for c in value]
        else:  # nulls, empty values and fields no stream sends in fragments: sent whole, once
            role[key] = value
    yield entry(role)

    # Reasoning first, as a reasoning model produces it; both names in the same deltas.
    thought = [text_pieces(texts.get(k, ""), size) for k in ("reasoning_content", "reasoning")]
    for a, b in zip_longest(*thought):
        yield entry({k: v for k, v in (("reasoning_content", a), ("reasoning", b)) if v is not None})

    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    unsent = has_logprobs
    if "content" in texts and isinstance(tokens, list):
        rest = {k: v for k, v in logprobs.items() if k != "content"}
        for j, (text, group) in enumerate(content_with_logprobs(texts["content"], tokens, size)):
            yield entry({"content": text}, {"content": group, **(rest if j == 0 else {})})
        unsent = False
    else:
        for text in text_pieces(texts.get("content", ""), size):
            yield entry({"content": text})
    for text in text_pieces(texts.get("refusal", ""), size):
        yield entry({"refusal": text})
    for delta in _tool_call_deltas(calls, size):
        yield entry(delta)

    final = entry({}, logprobs if unsent else None)
    final["finish_reason"] = choice.get("finish_reason", "stop")
    for key, value in choice.items():
        if key not in ("index", "message", "logprobs", "finish_reason"):
            final[key] = value  # stop_reason and vendor fields, where vLLM puts stop_reason
    yield final


def render_sse(stored: dict[str, Any], include_usage: bool, piece_chars: int = 64) -> bytes:
    """The stored completion as the ``chat.completion.chunk`` stream vLLM would have sent.

    Text goes in pieces of ``piece_chars`` characters. The usage chunk carries the stored
    usage (zeros if the original stream reported none) and is sent only when asked for.
    """
    base: dict[str, Any] = {
        "id": fresh_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": stored.get("model", ""),
    }
    for key in EVERY_CHUNK:
        if key in stored:
            base[key] = stored[key]
    extra = {k: v for k, v in stored.items() if k not in COMPLETION_FIELDS and k not in EVERY_CHUNK}
    choices = [c for c in stored.get("choices") or () if isinstance(c, dict)]
    streams = [_choice_chunks(choice, position, piece_chars) for position, choice in enumerate(choices)]
    parts: list[bytes] = []
    for step in zip_longest(*streams):  # one entry per choice per step, as vLLM interleaves them
        for entry in step:
            if entry is not None:
                chunk = dict(base, choices=[entry])
                if not parts:
                    chunk.update(extra)
                parts.append(sse_data(chunk))
    if include_usage:
        parts.append(sse_data(dict(base, choices=[], usage=stored.get("usage") or ZERO_USAGE)))
    parts.append(DONE)
    return b"".join(parts)
