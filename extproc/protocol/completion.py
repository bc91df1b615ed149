"""The stored form of an answer: a ``chat.completion`` with every field the upstream sent.

A JSON answer is stored as the upstream sent it; a streamed answer as its deltas add up to
(:mod:`extproc.protocol.stream`). Known fields are typed below; fields of other vendors or
newer versions are carried untouched, at every level (completion, choice, message, tool call).
Entries stored by earlier versions have the same shape with fewer fields, and are served as is.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, TypedDict

from extproc.errors import NotStorable
from extproc.protocol.sse import dump_json


class StoredFunction(TypedDict, total=False):
    """A tool call's function: its name and its JSON arguments as text."""

    name: str
    arguments: str


class StoredToolCall(TypedDict, total=False):
    """One tool call of a message."""

    id: str
    type: str
    function: StoredFunction


class StoredMessage(TypedDict, total=False):
    """The assistant message of a choice (vLLM also sends ``annotations``, ``audio``, ``function_call``)."""

    role: str
    content: str | None
    reasoning_content: str | None
    """A reasoning model's chain of thought (vLLM ``--reasoning-parser``, DeepSeek)."""
    reasoning: str | None
    """The same under the name newer vLLM versions use."""
    refusal: str | None
    tool_calls: list[StoredToolCall]


class StoredLogprobs(TypedDict, total=False):
    """Per-token log probabilities of a choice."""

    content: list[dict[str, Any]] | None
    refusal: list[dict[str, Any]] | None


class StoredChoice(TypedDict, total=False):
    """One choice."""

    index: int
    message: StoredMessage
    logprobs: StoredLogprobs | None
    finish_reason: str | None
    stop_reason: int | str | None
    """vLLM: the stop string or token id that ended the choice."""


class StoredUsage(TypedDict, total=False):
    """Token counts of the original generation (with vLLM's and OpenAI's details)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, Any] | None
    completion_tokens_details: dict[str, Any] | None


class StoredCompletion(TypedDict, total=False):
    """The stored ``chat.completion``."""

    id: str
    object: str
    created: int
    model: str
    choices: list[StoredChoice]
    usage: StoredUsage | None
    service_tier: str | None
    system_fingerprint: str | None
    prompt_logprobs: list[Any] | None
    """vLLM: log probabilities of the prompt tokens."""
    kv_transfer_params: dict[str, Any] | None
    """vLLM: disaggregated-prefill parameters."""


TEXT_FIELDS = ("reasoning_content", "reasoning", "content", "refusal")
"""Message fields a stream sends as text fragments, in the order vLLM streams them."""

_GOOD_FINISH = frozenset({"stop", "tool_calls", "function_call"})


def is_error_payload(data: Any) -> bool:
    """True for an error object in place of a completion or chunk.

    OpenAI and vLLM send ``{"error": {...}}``; older vLLM sends ``{"object": "error", ...}``;
    some proxies ``{"type": "error", ...}``.
    """
    if not isinstance(data, dict):
        return False
    return bool(data.get("error")) or data.get("object") == "error" or data.get("type") == "error"


def validate_choices(
    completion: Any,
    choices_expected: int,
    answer_ok: Any,
    good_finish: frozenset[str] = _GOOD_FINISH,
) -> dict[str, Any]:
    """Check that a parsed completion has ``choices_expected`` complete choices, each with an
    answer ``answer_ok(choice)`` accepts: safe to serve again (chat and text completions alike)."""
    if not isinstance(completion, dict):
        raise NotStorable("unparseable")
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        raise NotStorable("no_choices")
    if len(choices) != choices_expected:
        raise NotStorable("incomplete")
    for choice in choices:
        if not isinstance(choice, dict) or not answer_ok(choice):
            raise NotStorable("unparseable")
        finish = choice.get("finish_reason")
        if finish in ("length", "content_filter"):
            raise NotStorable("truncated" if finish == "length" else "content_filter")
        if finish not in good_finish:
            raise NotStorable("incomplete")
    return completion


def validate_completion(completion: Any, choices_expected: int = 1) -> dict[str, Any]:
    """Check that a parsed ``chat.completion`` is complete and safe to serve again.

    An audio answer names audio the server keeps for an hour (``audio.id``, ``expires_at``):
    served later, it points at audio that is gone."""
    validate_choices(completion, choices_expected, lambda c: isinstance(c.get("message"), dict))
    if any(c["message"].get("audio") is not None for c in completion["choices"]):
        raise NotStorable("audio")
    return completion


def parse_json_completion(body: bytes, choices_expected: int = 1) -> dict[str, Any]:
    """Parse and validate a non-streaming chat.completion body; it is stored as it is."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise NotStorable("unparseable") from exc
    if is_error_payload(data):
        raise NotStorable("error_body")
    return validate_completion(data, choices_expected)


def fresh_id() -> str:
    """A new completion id, as OpenAI shapes them."""
    return "chatcmpl-" + secrets.token_hex(12)


def render_completion(stored: dict[str, Any]) -> bytes:
    """The stored completion as a JSON body: every stored field, a fresh ``id`` and ``created``."""
    out = dict(stored)
    out["id"] = fresh_id()
    out["created"] = int(time.time())
    out["object"] = "chat.completion"
    return dump_json(out)


@dataclass(frozen=True)
class SavedTokens:
    """What serving a stored answer saved: the tokens of its original generation."""

    prompt: int
    completion: int

    @property
    def total(self) -> int:
        """Prompt and completion tokens together."""
        return self.prompt + self.completion


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def saved_tokens(stored: dict[str, Any]) -> SavedTokens | None:
    """The stored ``usage`` as :class:`SavedTokens`, or None when the entry has no usable usage.

    Chat and text completions count ``prompt_tokens``/``completion_tokens``; a Responses answer
    counts the same as ``input_tokens``/``output_tokens``. A stream stored without
    ``stream_options.include_usage`` reported no usage: nothing is claimed for it.
    """
    usage = stored.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    if prompt is None and completion is None:  # only a Responses usage may name them otherwise
        prompt, completion = _count(usage.get("input_tokens")), _count(usage.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    return SavedTokens(prompt or 0, completion or 0)
