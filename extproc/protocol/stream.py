"""``chat.completion.chunk`` streams: read one into the stored form (replaying: :mod:`.replay`).

Reading adds the deltas up as the OpenAI SDK does: text fragments are concatenated, tool calls
are merged by their ``index``, lists (``logprobs.content``) are appended, and a field sent only
as ``null`` is kept as ``null``. Every other field of a chunk, a choice or a delta is kept too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from extproc.errors import NotStorable
from extproc.protocol.completion import is_error_payload, validate_completion
from extproc.protocol.sse import iter_sse_events

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


def _merge_chunk(head: dict[str, Any], choices: dict[int, StreamChoice], chunk: dict[str, Any]) -> None:
    """Fold one stream chunk into the completion so far (``head``) and its ``choices``."""
    for key, value in chunk.items():
        if key == "choices":
            if not isinstance(value, list | None):
                raise NotStorable("unparseable")
            for raw in value or ():
                _merge_choice(choices, raw)
        elif key in ("id", "created", "model"):
            # The first non-blank one: Azure opens a stream with a chunk of blank id and model
            # and created 0 (its prompt filter results), then the real ones.
            if key not in head or (not head[key] and value):
                head[key] = value
        elif key in ("object", "obfuscation"):
            continue  # obfuscation: OpenAI's per-chunk padding, no part of the answer
        elif key == "usage":
            if isinstance(value, dict):  # the latest counts (vLLM's continuous_usage_stats repeats it)
                head[key] = value
        else:
            _latest(head, key, value)


def _joined(value: Any) -> Any:
    """``value`` with every :class:`_Parts` joined into its text."""
    if isinstance(value, _Parts):
        return "".join(value)
    if isinstance(value, dict):
        return {k: _joined(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_joined(v) for v in value]
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


def fold_stream(
    body: bytes, reshape: Callable[[Any], dict[str, Any]] | None = None
) -> tuple[dict[str, Any], dict[int, StreamChoice]]:
    """A complete stream's chunks folded into (top-level fields, choices by index).

    ``reshape`` turns each chunk choice into the chat delta shape first (the legacy completions'
    ``text``). An error-shaped payload or one that is not JSON makes it unstorable.
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
            parts = chunk.get("choices")
            if reshape is not None and isinstance(parts, list):
                chunk = dict(chunk, choices=[reshape(part) for part in parts])
            _merge_chunk(head, choices, chunk)
    except (ValueError, RecursionError) as exc:  # not JSON, or nested deeper than we can merge
        raise NotStorable("unparseable") from exc
    return head, choices


def assemble(
    head: dict[str, Any],
    choices: dict[int, StreamChoice],
    kind: str,
    choice_of: Callable[[StreamChoice], dict[str, Any]],
) -> dict[str, Any]:
    """The completion (``object`` ``kind``) a folded stream adds up to, its text fields joined."""
    completion: dict[str, Any] = {
        "id": head.pop("id", ""),
        "object": kind,
        "created": head.pop("created", 0),
        "model": head.pop("model", ""),
        "choices": [choice_of(choices[i]) for i in sorted(choices)],
    }
    usage = head.pop("usage", None)
    completion.update(head)
    if usage is not None:
        completion["usage"] = usage
    try:
        return _joined(completion)
    except RecursionError as exc:
        raise NotStorable("unparseable") from exc


def parse_sse_completion(body: bytes, choices_expected: int = 1) -> dict[str, Any]:
    """Rebuild the ``chat.completion`` a complete ``chat.completion.chunk`` stream adds up to.

    Every choice must have a finish_reason; an error-shaped payload makes the stream
    unstorable (see :func:`stream_payloads` for the framing rules).
    """
    head, choices = fold_stream(body)
    return validate_completion(assemble(head, choices, "chat.completion", _assemble_choice), choices_expected)
