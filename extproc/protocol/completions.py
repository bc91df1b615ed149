"""The legacy ``POST /v1/completions`` format (vLLM, OpenAI): one ``prompt`` string in, text out.

The same request identity as chat (model, normalized prompt, fingerprint of everything else)
with the endpoint in the fingerprint, so a chat answer is never served as a text completion.
Streams are ``text_completion`` chunks (``choices[].text``) ending with ``data: [DONE]``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable
from typing import Any

from extproc.errors import NotCacheable, NotStorable
from extproc.protocol.completion import validate_choices
from extproc.protocol.openai import (
    ChatRequest,
    _hash,
    check_model,
    load_request,
    normalize_text,
)
from extproc.protocol.stream import stream_payloads

COMPLETIONS_PATH = "/v1/completions"


def parse_completions_request(
    body: bytes, ignore_fields: Iterable[str] = ("stream", "stream_options")
) -> ChatRequest:
    """Parse a completions body (``prompt``: one string) into a :class:`ChatRequest`."""
    data = load_request(body)
    model, prompt = check_model(data.get("model")), data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):  # token ids or a batch of prompts: one answer per prompt
        raise NotCacheable("unsupported_prompt")
    text = normalize_text(prompt)
    if not text:
        raise NotCacheable("empty_prompt")
    ignored = set(ignore_fields)
    identity = {k: v for k, v in data.items() if k not in ignored and k not in ("model", "prompt")}
    try:
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, RecursionError) as exc:
        raise NotCacheable("bad_json") from exc
    options = data.get("stream_options")
    return ChatRequest(
        model=model,
        prompt=text,
        fingerprint=_hash("completions", canonical),
        stream=data.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        n=data["n"] if isinstance(data.get("n"), int) and data["n"] > 0 else 1,
    )


def validate_text_completion(completion: Any, choices_expected: int = 1) -> dict[str, Any]:
    """Check that a ``text_completion`` is complete and safe to serve again."""
    return validate_choices(
        completion, choices_expected, lambda c: isinstance(c.get("text"), str), frozenset({"stop"})
    )


def parse_json_text_completion(body: bytes, choices_expected: int = 1) -> dict[str, Any]:
    """Parse and validate a non-streaming ``text_completion`` body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotStorable("unparseable") from exc
    if isinstance(data, dict) and "error" in data:
        raise NotStorable("error_body")
    return validate_text_completion(data, choices_expected)


def parse_sse_text_completion(body: bytes, choices_expected: int = 1) -> dict[str, Any]:
    """Rebuild one ``text_completion`` from a complete stream of them (ending ``[DONE]``)."""
    payloads = stream_payloads(body)
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for payload in payloads:
        try:
            chunk = json.loads(payload)
        except ValueError as exc:
            raise NotStorable("unparseable") from exc
        if not isinstance(chunk, dict) or "error" in chunk:
            raise NotStorable("error_body")
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in chunk and key not in head:
                head[key] = chunk[key]
        if chunk.get("usage"):
            head["usage"] = chunk["usage"]
        for part in chunk.get("choices") or []:
            if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                raise NotStorable("unparseable")
            index = part.get("index", 0)
            empty = {"index": index, "text": "", "logprobs": None, "finish_reason": None}
            choice = choices.setdefault(index, empty)
            choice["text"] += part.get("text") or ""
            if part.get("finish_reason"):
                choice["finish_reason"] = part["finish_reason"]
    completion = {
        "id": head.get("id", ""),
        "object": "text_completion",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [choices[i] for i in sorted(choices)],
    }
    completion.update({k: head[k] for k in ("system_fingerprint", "usage") if k in head})
    return validate_text_completion(completion, choices_expected)


def _fresh_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


def render_text_completion(stored: dict[str, Any]) -> bytes:
    """The stored ``text_completion`` as JSON with a fresh ``id`` and ``created``."""
    out = dict(stored, id=_fresh_id(), created=int(time.time()), object="text_completion")
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def render_text_sse(stored: dict[str, Any], include_usage: bool, piece_chars: int = 64) -> bytes:
    """The stored ``text_completion`` as a stream: text pieces, a finish chunk, usage, ``[DONE]``."""
    base: dict[str, Any] = {
        "id": _fresh_id(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": stored.get("model", ""),
    }
    if "system_fingerprint" in stored:
        base["system_fingerprint"] = stored["system_fingerprint"]

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        payload = dict(base, choices=choices) | ({"usage": usage} if usage is not None else {})
        return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"

    parts: list[bytes] = []
    for choice in stored.get("choices", []):
        index, text = choice.get("index", 0), choice.get("text") or ""
        for start in range(0, len(text), piece_chars):
            piece = {"index": index, "text": text[start : start + piece_chars], "logprobs": None}
            parts.append(chunk([piece | {"finish_reason": None}]))
        finish = choice.get("finish_reason", "stop")
        parts.append(chunk([{"index": index, "text": "", "logprobs": None, "finish_reason": finish}]))
    if include_usage:
        usage = stored.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        parts.append(chunk([], usage))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)
