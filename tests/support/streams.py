"""Streams as an upstream could send them, for a given completion, cut at random places.

Written apart from extproc/protocol/stream.py on purpose: the round-trip tests read these
streams with the processor's parser, so the two must not share code. Shapes follow vLLM and
OpenAI: a role delta (vLLM opens content with ``""``; OpenAI puts ``null`` fields there), text in
fragments of any size (reasoning before content), logprobs on the deltas of their tokens,
tool calls as a header then argument fragments, a final chunk with ``finish_reason`` and
``stop_reason``, choices interleaved in any order, then usage and ``[DONE]``; lines end in LF,
CRLF or CR, with or without a space after ``data:``, and comments in between.
"""

from __future__ import annotations

import json
import random
from itertools import pairwise
from typing import Any

_TEXT = ("reasoning_content", "reasoning", "content", "refusal")
_TOP = ("id", "object", "created", "model", "choices", "usage")


def _cuts(rng: random.Random, text: str) -> list[str]:
    """``text`` in 1..4 fragments cut at random places (empty fragments allowed)."""
    points = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(0, 3)))
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


def _split_list(rng: random.Random, items: list[Any], parts: int) -> list[list[Any]]:
    points = sorted(rng.randint(0, len(items)) for _ in range(parts - 1))
    bounds = [0, *points, len(items)]
    return [items[a:b] for a, b in pairwise(bounds)]


def _choice_entries(rng: random.Random, choice: dict[str, Any]) -> list[dict[str, Any]]:
    index = choice["index"]
    message = choice["message"]
    logprobs_present = "logprobs" in choice
    logprobs = choice.get("logprobs")
    entries: list[dict[str, Any]] = []

    def add(delta: dict[str, Any], probs: Any = None) -> None:
        entry: dict[str, Any] = {"index": index, "delta": delta}
        if logprobs_present:
            entry["logprobs"] = probs
        entry["finish_reason"] = None
        entries.append(entry)

    first: dict[str, Any] = {"role": message["role"]}
    later: list[dict[str, Any]] = []  # whole fields sent in a delta of their own
    for key, value in message.items():
        if key == "role" or (key in _TEXT and isinstance(value, str) and value):
            continue
        if key == "tool_calls" and value:
            continue
        if rng.random() < 0.7:
            first[key] = value
        else:
            later.append({key: value})
    content = message.get("content")
    if isinstance(content, str) and content and rng.random() < 0.5:
        first["content"] = ""  # vLLM's opening delta
    add(first)
    for delta in later:
        add(delta)

    thoughts = {k: _cuts(rng, message[k]) for k in ("reasoning_content", "reasoning") if message.get(k)}
    if rng.random() < 0.5:  # both names in the same deltas, as newer vLLM sends them
        for i in range(max((len(v) for v in thoughts.values()), default=0)):
            add({k: v[i] for k, v in thoughts.items() if i < len(v)})
    else:
        for key, pieces in thoughts.items():
            for piece in pieces:
                add({key: piece})

    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    sent_logprobs = False
    if isinstance(content, str) and content:
        pieces = _cuts(rng, content)
        if isinstance(tokens, list):
            groups = _split_list(rng, tokens, len(pieces))
            rest = {k: v for k, v in logprobs.items() if k != "content"}
            for i, (piece, group) in enumerate(zip(pieces, groups, strict=True)):
                add({"content": piece}, {"content": group, **(rest if i == 0 else {})})
            sent_logprobs = True
        else:
            for piece in pieces:
                add({"content": piece})
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        for piece in _cuts(rng, refusal):
            add({"refusal": piece})
    for i, call in enumerate(message.get("tool_calls") or []):
        head = {"index": i, **{k: v for k, v in call.items() if k != "function"}}
        function = dict(call.get("function") or {})
        arguments = function.pop("arguments", None)
        if isinstance(arguments, str):
            fragments = _cuts(rng, arguments)
            head["function"] = {**function, "arguments": fragments[0]}
            add({"tool_calls": [head]})
            for fragment in fragments[1:]:
                add({"tool_calls": [{"index": i, "function": {"arguments": fragment}}]})
        else:
            if "function" in call:
                head["function"] = call["function"]
            add({"tool_calls": [head]})

    final: dict[str, Any] = {"index": index, "delta": {}}
    if isinstance(content, str) and rng.random() < 0.5:
        final["delta"] = {"content": ""}  # vLLM's last delta
    if logprobs_present:
        final["logprobs"] = None if sent_logprobs else logprobs
    for key, value in choice.items():
        if key not in ("index", "message", "logprobs"):
            final[key] = value
    entries.append(final)
    return entries


def _interleave(rng: random.Random, streams: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Merge the per-choice sequences in a random order that keeps each one's own order."""
    queues = [list(s) for s in streams]
    out: list[dict[str, Any]] = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        out.append(queue.pop(0))
    return out


def upstream_stream(completion: dict[str, Any], seed: int) -> bytes:
    """The SSE body of ``completion`` as a streaming upstream could send it (include_usage on)."""
    rng = random.Random(seed)
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
    }
    extra = {k: v for k, v in completion.items() if k not in _TOP}
    every = {k: v for k, v in extra.items() if rng.random() < 0.5}  # repeated on every chunk
    entries = _interleave(rng, [_choice_entries(rng, c) for c in completion["choices"]])
    chunks = [dict(base, choices=[e], **every) for e in entries]
    chunks[0].update(extra)
    chunks.append(dict(base, choices=[], usage=completion["usage"]))
    end = rng.choice(["\n", "\r\n", "\r"])
    out: list[str] = []
    for chunk in [*chunks, "[DONE]"]:
        if rng.random() < 0.2:
            out.append(": keep-alive" + end)
        data = chunk if isinstance(chunk, str) else json.dumps(chunk, ensure_ascii=False)
        out.append(rng.choice(["data: ", "data:"]) + data + end + end)
    return "".join(out).encode("utf-8")
