"""OpenAI chat-completions formats: request parsing, request identity, SSE parse and synthesis.

Pure functions over bytes and dicts; nothing here knows about Envoy or the cache backend.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from extproc.errors import NotCacheable, NotStorable

CHAT_PATH = "/v1/chat/completions"
MAX_MODEL_CHARS = 256
"""Longer ``model`` values are not cached (no real model name is that long)."""


@dataclass(frozen=True)
class ChatRequest:
    """What the cache needs to know about one chat-completions request."""

    model: str
    prompt: str
    """Normalized text of the last user message: the part that is embedded."""
    fingerprint: str
    """Hash of everything else in the request that can change the answer."""
    stream: bool
    include_usage: bool
    n: int = 1
    """Choices asked for; a stored response must have exactly this many, all complete."""


def normalize_text(text: str) -> str:
    """Unicode NFC, line ends as ``\\n``, trailing spaces and blank lines at both ends removed.

    Whitespace that can be meaning is kept (case too): indentation, runs of spaces inside a line
    (in code and quoted strings they change the answer), and the lines themselves.  A one-line
    text is trimmed at both ends.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    if len(lines) <= 1:
        return lines[0].strip() if lines else ""
    return "\n".join(lines)


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def _split_content(content: Any) -> tuple[str, Any]:
    """Split message content into (text to embed, the non-text rest kept in the fingerprint)."""
    if isinstance(content, str):
        return content, None
    if isinstance(content, list):
        texts: list[str] = []
        rest: list[Any] = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                rest.append(part)
        return "\n".join(texts), rest or None
    raise NotCacheable("bad_messages")


def parse_chat_request(
    body: bytes, ignore_fields: Iterable[str] = ("stream", "stream_options")
) -> ChatRequest:
    """Parse a chat-completions body into a :class:`ChatRequest` or raise :class:`NotCacheable`."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise NotCacheable("bad_json") from exc
    if not isinstance(data, dict):
        raise NotCacheable("bad_json")
    model = data.get("model")
    messages = data.get("messages")
    if not isinstance(model, str) or not model:
        raise NotCacheable("no_model")
    if len(model) > MAX_MODEL_CHARS:
        raise NotCacheable("model_too_long")
    if not isinstance(messages, list) or not messages:
        raise NotCacheable("bad_messages")
    if not all(isinstance(m, dict) for m in messages):
        raise NotCacheable("bad_messages")
    last_user = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if last_user is None:
        raise NotCacheable("no_user_message")
    text, rest = _split_content(messages[last_user].get("content"))
    prompt = normalize_text(text)
    if not prompt:
        raise NotCacheable("empty_prompt")

    ignored = set(ignore_fields)
    identity = {k: v for k, v in data.items() if k not in ignored and k != "model"}
    msgs = list(messages)
    placeholder = {k: v for k, v in messages[last_user].items() if k != "content"}
    placeholder["content"] = {"$last_user_text": True, "rest": rest}
    msgs[last_user] = placeholder
    identity["messages"] = msgs
    try:
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (ValueError, RecursionError) as exc:  # e.g. lone surrogates, absurd nesting
        raise NotCacheable("bad_json") from exc
    stream_options = data.get("stream_options")
    return ChatRequest(
        model=model,
        prompt=prompt,
        fingerprint=_hash(canonical),
        stream=data.get("stream") is True,
        include_usage=isinstance(stream_options, dict) and stream_options.get("include_usage") is True,
        n=data["n"] if isinstance(data.get("n"), int) and data["n"] > 0 else 1,
    )


def exact_key(model: str, scope: str, fingerprint: str, prompt: str) -> str:
    """H(model, scope, fingerprint, normalized prompt): finds exact repeats without embedding."""
    return _hash("exact", model, scope, fingerprint, prompt)


def partition_key(model: str, scope: str, fingerprint: str) -> str:
    """H(model, scope, fingerprint): only entries with the same partition may ever match."""
    return _hash("partition", model, scope, fingerprint)


def with_revision(fingerprint: str, revision: str) -> str:
    """The fingerprint of a request answered by model weights ``revision`` ("" keeps it as is).

    Folding the revision into the fingerprint puts it into the partition and the exact key, so
    answers of other weights under the same ``model`` name are never served.
    """
    return _hash("revision", fingerprint, revision) if revision else fingerprint


def with_query(fingerprint: str, query: str) -> str:
    """The fingerprint of a request sent with the (canonical) query string ``query``.

    Gateways route on query parameters (``?api-version=…&deployment=…``): the answer of one
    deployment is never served for another, nor for the bare path.
    """
    return _hash("query", fingerprint, query) if query else fingerprint


_AUTH_SCHEMES = frozenset({"bearer", "basic", "digest", "token", "apikey", "api-key", "negotiate"})


def scope_from_authorization(value: str | None) -> str | None:
    """Hash of the credentials (never the credentials themselves), or None without any.

    ``Bearer <token>`` and a bare ``<token>`` are the same tenant (the token is what the upstream
    checks); another scheme hashes the whole value.  An empty token, or a scheme word alone
    (``Bearer``), is no credential: the request bypasses (``no_scope``).  Hashed from the raw
    bytes, so tokens that are not valid text never collide.
    """
    words = (value or "").split(None, 1)
    if not words or (len(words) == 1 and words[0].lower() in _AUTH_SCHEMES):
        return None
    token = words[1].strip() if words[0].lower() == "bearer" else (value or "").strip()
    return "auth:" + _hash("authorization", token)[:32] if token else None


def scope_from_header(value: str, max_chars: int) -> str | None:
    """The scope of a tenant header's value, or None when it is missing, blank or too long.

    A value that is not valid UTF-8 (decoded with ``surrogateescape``) is named by its raw bytes
    in hex, so ``t\\xff`` and ``t\\xfe``, or two Latin-1 names, are two tenants, never one.
    """
    value = value.strip()
    if not 0 < len(value) <= max_chars:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "header-bytes:" + value.encode("utf-8", "surrogateescape").hex()
    return f"header:{value}"


# --- responses ----------------------------------------------------------------------------


_GOOD_FINISH = frozenset({"stop", "tool_calls", "function_call"})


def validate_completion(completion: Any, choices_expected: int = 1) -> dict[str, Any]:
    """Check that a parsed ``chat.completion`` is complete and safe to serve again."""
    if not isinstance(completion, dict):
        raise NotStorable("unparseable")
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        raise NotStorable("no_choices")
    if len(choices) != choices_expected:
        raise NotStorable("incomplete")
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise NotStorable("unparseable")
        finish = choice.get("finish_reason")
        if finish in ("length", "content_filter"):
            raise NotStorable("truncated" if finish == "length" else "content_filter")
        if finish not in _GOOD_FINISH:
            raise NotStorable("incomplete")
    return completion


def parse_json_completion(body: bytes, choices_expected: int = 1) -> dict[str, Any]:
    """Parse and validate a non-streaming chat.completion body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotStorable("unparseable") from exc
    if isinstance(data, dict) and "error" in data:
        raise NotStorable("error_body")
    return validate_completion(data, choices_expected)


def iter_sse_data(body: bytes) -> Iterable[str]:
    """Yield the ``data:`` payloads of a complete SSE body, one per event."""
    text = body.decode("utf-8")
    for event in re.split(r"\r?\n\r?\n", text):
        lines = [ln[5:].lstrip(" ") if ln.startswith("data:") else None for ln in event.splitlines()]
        data = [ln for ln in lines if ln is not None]
        if data:
            yield "\n".join(data)


def parse_sse_completion(body: bytes, choices_expected: int = 1) -> dict[str, Any]:
    """Rebuild one canonical ``chat.completion`` from a complete ``chat.completion.chunk`` stream.

    The stream must end with ``data: [DONE]`` and every choice must have a finish_reason.
    """
    try:
        payloads = list(iter_sse_data(body))
    except UnicodeDecodeError as exc:
        raise NotStorable("unparseable") from exc
    if not payloads or payloads[-1].strip() != "[DONE]":
        raise NotStorable("stream_incomplete")
    choices: dict[int, dict[str, Any]] = {}
    head: dict[str, Any] = {}
    usage: Any = None
    for payload in payloads[:-1]:
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
            usage = chunk["usage"]
        for delta_choice in chunk.get("choices") or []:
            _merge_delta(choices, delta_choice)
    completion: dict[str, Any] = {
        "id": head.get("id", ""),
        "object": "chat.completion",
        "created": head.get("created", 0),
        "model": head.get("model", ""),
        "choices": [choices[i] for i in sorted(choices)],
    }
    if "system_fingerprint" in head:
        completion["system_fingerprint"] = head["system_fingerprint"]
    if usage is not None:
        completion["usage"] = usage
    return validate_completion(completion, choices_expected)


def _merge_delta(choices: dict[int, dict[str, Any]], delta_choice: Any) -> None:
    if not isinstance(delta_choice, dict):
        raise NotStorable("unparseable")
    index = delta_choice.get("index", 0)
    choice = choices.setdefault(
        index, {"index": index, "message": {"role": "assistant", "content": None}, "finish_reason": None}
    )
    delta = delta_choice.get("delta") or {}
    message = choice["message"]
    if isinstance(delta.get("role"), str):
        message["role"] = delta["role"]
    if isinstance(delta.get("content"), str):
        message["content"] = (message["content"] or "") + delta["content"]
    if isinstance(delta.get("refusal"), str):
        message["refusal"] = (message.get("refusal") or "") + delta["refusal"]
    for call in delta.get("tool_calls") or []:
        calls = message.setdefault("tool_calls", [])
        i = call.get("index", len(calls))
        while len(calls) <= i:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        target = calls[i]
        if call.get("id"):
            target["id"] = call["id"]
        if call.get("type"):
            target["type"] = call["type"]
        fn = call.get("function") or {}
        target["function"]["name"] += fn.get("name") or ""
        target["function"]["arguments"] += fn.get("arguments") or ""
    if delta_choice.get("finish_reason"):
        choice["finish_reason"] = delta_choice["finish_reason"]
    if delta_choice.get("logprobs") is not None:
        choice.setdefault("logprobs", {"content": []})
        content = (delta_choice["logprobs"] or {}).get("content") or []
        choice["logprobs"]["content"].extend(content)


# --- serving a stored completion ----------------------------------------------------------


def _fresh_id() -> str:
    return "chatcmpl-" + secrets.token_hex(12)


def render_completion(stored: dict[str, Any]) -> bytes:
    """The stored completion as a JSON body with a fresh ``id`` and ``created``."""
    out = dict(stored)
    out["id"] = _fresh_id()
    out["created"] = int(time.time())
    out["object"] = "chat.completion"
    return json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _chunk(base: dict[str, Any], choices: Sequence[dict[str, Any]], usage: Any = None) -> bytes:
    chunk = dict(base, choices=list(choices))
    if usage is not None:
        chunk["usage"] = usage
    return b"data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def render_sse(stored: dict[str, Any], include_usage: bool, piece_chars: int = 64) -> bytes:
    """The stored completion as a well-formed ``chat.completion.chunk`` SSE stream.

    Per choice: a role delta, content deltas, a final chunk with ``finish_reason``; then a
    usage chunk when asked for; then ``data: [DONE]``.
    """
    base: dict[str, Any] = {
        "id": _fresh_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": stored.get("model", ""),
    }
    if "system_fingerprint" in stored:
        base["system_fingerprint"] = stored["system_fingerprint"]
    parts: list[bytes] = []
    for choice in stored.get("choices", []):
        index = choice.get("index", 0)
        message = choice.get("message", {})
        parts.append(
            _chunk(
                base,
                [
                    {
                        "index": index,
                        "delta": {"role": message.get("role", "assistant"), "content": ""},
                        "finish_reason": None,
                    }
                ],
            )
        )
        content = message.get("content") or ""
        for start in range(0, len(content), piece_chars):
            delta = {"content": content[start : start + piece_chars]}
            parts.append(_chunk(base, [{"index": index, "delta": delta, "finish_reason": None}]))
        if message.get("refusal"):
            parts.append(
                _chunk(
                    base, [{"index": index, "delta": {"refusal": message["refusal"]}, "finish_reason": None}]
                )
            )
        calls = message.get("tool_calls") or []
        if calls:
            deltas = [dict(call, index=i) for i, call in enumerate(calls)]
            parts.append(
                _chunk(base, [{"index": index, "delta": {"tool_calls": deltas}, "finish_reason": None}])
            )
        parts.append(
            _chunk(
                base, [{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason", "stop")}]
            )
        )
    if include_usage:  # the stored usage; zeros if the original stream did not report it
        usage = stored.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        parts.append(_chunk(base, [], usage=usage))
    parts.append(b"data: [DONE]\n\n")
    return b"".join(parts)
