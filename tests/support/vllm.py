"""vLLM response shapes (tests/data/vllm/*.json) and a reader of streams that shares no code with ours.

Each fixture holds one answer twice, as vLLM serializes it: ``json`` (the non-streaming body)
and ``stream`` (the ``chat.completion.chunk`` objects of the streaming body, the usage chunk
last), plus ``request`` (the request fields that produce it: ``n``, ``tools``, ``logprobs``…).
They are written by hand to the protocol models of the vLLM version each names (every field
``model_dump()`` writes, ``exclude_unset`` chunks), not captured from a live server.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from openai.lib.streaming._deltas import accumulate_delta

DATA = Path(__file__).resolve().parent.parent / "data" / "vllm"
FIXTURES: dict[str, dict[str, Any]] = {
    p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DATA.glob("*.json"))
}


def stream_body(chunks: list[dict[str, Any]], include_usage: bool) -> bytes:
    """The SSE body vLLM writes for ``chunks`` (compact JSON, UTF-8 unescaped, as pydantic writes it)."""
    lines = [
        b"data: " + json.dumps(c, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
        for c in chunks
        if include_usage or c.get("choices") or "usage" not in c
    ]
    return b"".join(lines) + b"data: [DONE]\n\n"


def accumulate(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat.completion a list of chunk objects adds up to, deltas merged by the openai SDK.

    The reference the tests hold our parser and renderer to: message fields through the SDK's
    ``accumulate_delta``, logprobs appended, other choice and completion fields the latest.
    """
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for chunk in copy.deepcopy(chunks):  # the SDK's accumulator merges into the objects it is given
        for key, value in chunk.items():
            if key in ("id", "created", "model"):
                head.setdefault(key, value)
            elif key not in ("choices", "object") and (value is not None or key not in head):
                head[key] = value
        for entry in chunk.get("choices") or []:
            state = choices.setdefault(entry["index"], {"message": {}, "fields": {}})
            accumulate_delta(state["message"], entry.get("delta") or {})
            fields = state["fields"]
            for key, value in entry.items():
                if key in ("index", "delta"):
                    continue
                if key == "logprobs" and isinstance(value, dict) and isinstance(fields.get(key), dict):
                    fields[key]["content"] = (fields[key].get("content") or []) + (value.get("content") or [])
                elif value is not None or key not in fields:
                    fields[key] = value
    out: dict[str, Any] = {
        "id": head.pop("id"),
        "object": "chat.completion",
        "created": head.pop("created"),
        "model": head.pop("model"),
        "choices": [],
    }
    for index in sorted(choices):
        message = {"role": "assistant", "content": None, **choices[index]["message"]}
        calls = message.get("tool_calls")
        if calls:  # the SDK keeps the delta's index; a JSON message has none
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in calls]
        out["choices"].append({"index": index, "message": message, **choices[index]["fields"]})
    out.update(head)
    return out


def without_id(completion: dict[str, Any]) -> dict[str, Any]:
    """``completion`` without ``id`` and ``created`` (what a hit changes)."""
    return {k: v for k, v in completion.items() if k not in ("id", "created")}
