"""Replaying a stored answer as the ``chat.completion.chunk`` stream vLLM would have sent.

Per choice: a role delta, the reasoning deltas, the content deltas (each with the log
probabilities of its tokens), refusal deltas, the tool calls (id and name first, then the
argument fragments in order) and a final chunk with ``finish_reason`` and ``stop_reason``;
several choices are interleaved; then the usage chunk when asked for, then ``data: [DONE]``.
Reading a replay (:mod:`extproc.protocol.stream`) gives back the stored completion, apart from
``id`` and ``created``. The legacy completions replay through :func:`render_chunks` too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from itertools import zip_longest
from typing import Any

from extproc.protocol.completion import TEXT_FIELDS, fresh_id
from extproc.protocol.sse import DONE, sse_data

_COMPLETION_FIELDS = frozenset({"id", "object", "created", "model", "choices", "usage"})
"""Fields every completion has; any other top-level field is the upstream's own and kept."""
_EVERY_CHUNK = ("service_tier", "system_fingerprint")
"""Completion fields repeated on every chunk, as OpenAI does; other extra fields go on the first."""
_ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
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
    return render_chunks(
        stored, include_usage, "chat.completion.chunk", fresh_id(), _choice_chunks, piece_chars
    )


ChoiceChunks = Callable[[dict[str, Any], int, int], Iterator[dict[str, Any]]]
"""(stored choice, its position, piece size) -> the chunk choices that replay it, final one last."""


def render_chunks(
    stored: dict[str, Any],
    include_usage: bool,
    kind: str,
    stream_id: str,
    choice_chunks: ChoiceChunks,
    piece_chars: int,
) -> bytes:
    """A stored answer as a stream of ``kind`` chunks: each choice's chunks interleaved (as vLLM
    sends them), the answer's own fields on every chunk or the first, usage if asked, ``[DONE]``."""
    base: dict[str, Any] = {
        "id": stream_id,
        "object": kind,
        "created": int(time.time()),
        "model": stored.get("model", ""),
    }
    for key in _EVERY_CHUNK:
        if key in stored:
            base[key] = stored[key]
    extra = {k: v for k, v in stored.items() if k not in _COMPLETION_FIELDS and k not in _EVERY_CHUNK}
    choices = [c for c in stored.get("choices") or () if isinstance(c, dict)]
    streams = [choice_chunks(choice, position, piece_chars) for position, choice in enumerate(choices)]
    parts: list[bytes] = []
    for step in zip_longest(*streams):  # one entry per choice per step, as vLLM interleaves them
        for entry in step:
            if entry is not None:
                chunk = dict(base, choices=[entry])
                if not parts:
                    chunk.update(extra)
                parts.append(sse_data(chunk))
    if include_usage:
        parts.append(sse_data(dict(base, choices=[], usage=stored.get("usage") or _ZERO_USAGE)))
    parts.append(DONE)
    return b"".join(parts)
