"""The legacy ``POST /v1/completions`` format (vLLM, OpenAI): one ``prompt`` string in, text out.

The same request identity as chat (model, normalized prompt, fingerprint of everything else)
with the endpoint in the fingerprint, so a chat answer is never served as a text completion.
Streams are ``text_completion`` chunks (``choices[].text``) ending with ``data: [DONE]``; they
are read and replayed with the chat stream's rules (:mod:`.stream`, :mod:`.replay`), so the legacy
``logprobs`` (per-token lists, split and joined with the text) and vLLM's ``stop_reason`` survive
a stream stored and served as JSON, and the reverse.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

from extproc.errors import NotCacheable, NotStorable
from extproc.protocol.completion import validate_choices
from extproc.protocol.openai import (
    IGNORED_FIELDS,
    ChatRequest,
    _hash,
    canonical_json,
    check_model,
    client_fields,
    load_request,
    normalize_text,
    quotes_prompt,
    raw_prompt_identity,
    streaming,
)
from extproc.protocol.replay import (
    content_with_logprobs,
    render_chunks,
    text_pieces,
)
from extproc.protocol.sse import dump_json
from extproc.protocol.stream import StreamChoice, assemble, fold_stream

COMPLETIONS_PATH = "/v1/completions"


def parse_completions_request(body: bytes, ignore_fields: Iterable[str] = IGNORED_FIELDS) -> ChatRequest:
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
    stream, include_usage = streaming(data)
    quoted = quotes_prompt(data)
    identity = client_fields(data, (*ignore_fields, "model", "prompt"))
    raw = raw_prompt_identity(prompt, text, quoted)
    if raw:  # the answer goes on from the prompt's last character (or quotes it whole)
        identity["$raw_prompt"] = raw
    canonical = canonical_json(identity)
    return ChatRequest(
        model=model,
        prompt=text,
        fingerprint=_hash("completions", canonical),
        stream=stream,
        include_usage=include_usage,
        n=data["n"] if isinstance(data.get("n"), int) and data["n"] > 0 else 1,
        quotes_prompt=quoted,
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


def _as_chat_choice(part: Any) -> dict[str, Any]:
    """A ``text_completion`` chunk choice in the chat chunk shape, its ``text`` as a delta.

    The chat reader then adds the choices up: text fragments concatenated, the legacy
    ``logprobs`` lists (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``)
    appended, ``stop_reason`` and other fields kept, the latest non-null value winning.
    """
    if not isinstance(part, dict) or not isinstance(part.get("text", ""), str | None):
        raise NotStorable("unparseable")
    rest = {k: v for k, v in part.items() if k not in ("text", "delta")}
    return rest | {"delta": {"text": part.get("text") or ""}}


def _assemble_text_choice(choice: StreamChoice) -> dict[str, Any]:
    fields = dict(choice.fields)
    return {
        "index": choice.index,
        "text": choice.message.get("text", ""),
        "logprobs": fields.pop("logprobs", None),
        "finish_reason": fields.pop("finish_reason", None),
        **fields,
    }


def parse_sse_text_completion(body: bytes, choices_expected: int = 1) -> dict[str, Any]:
    """Rebuild one ``text_completion`` from a complete stream of them (ending ``[DONE]``)."""
    head, choices = fold_stream(body, _as_chat_choice)
    completion = assemble(head, choices, "text_completion", _assemble_text_choice)
    return validate_text_completion(completion, choices_expected)


def _fresh_id() -> str:
    return "cmpl-" + secrets.token_hex(12)


def render_text_completion(stored: dict[str, Any]) -> bytes:
    """The stored ``text_completion`` as JSON with a fresh ``id`` and ``created``."""
    return dump_json(dict(stored, id=_fresh_id(), created=int(time.time()), object="text_completion"))


def _text_with_logprobs(
    text: str, logprobs: dict[str, Any], size: int
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Text pieces, each with its slice of the legacy ``logprobs`` lists (the chat path's split).

    The per-token lists are cut where the piece's tokens are; any other field goes whole with
    the first piece. Concatenating the pieces and the slices gives back ``text`` and ``logprobs``.
    """
    tokens = logprobs["tokens"]
    per_token = {k for k, v in logprobs.items() if isinstance(v, list) and len(v) == len(tokens)}
    rest = {k: v for k, v in logprobs.items() if k not in per_token}
    # Tokens shaped as chat logprobs entries, each knowing its position, so the split is shared.
    entries = [{"token": t, "at": i} for i, t in enumerate(tokens)]
    for j, (piece, group) in enumerate(content_with_logprobs(text, entries, size)):
        start = group[0]["at"] if group else 0
        end = group[-1]["at"] + 1 if group else 0
        cut = {k: v[start:end] for k, v in logprobs.items() if k in per_token}
        yield piece, cut | (rest if j == 0 else {})


def _text_choice_chunks(choice: dict[str, Any], position: int, size: int) -> Iterator[dict[str, Any]]:
    """The ``choices`` entries that replay one stored choice: text pieces, then the final entry."""
    index, text = choice.get("index", position), choice.get("text") or ""
    logprobs = choice.get("logprobs")
    unsent = logprobs
    if text and isinstance(logprobs, dict) and isinstance(logprobs.get("tokens"), list):
        for piece, probs in _text_with_logprobs(text, logprobs, size):
            yield {"index": index, "text": piece, "logprobs": probs, "finish_reason": None}
        unsent = None
    else:
        for piece in text_pieces(text, size):
            yield {"index": index, "text": piece, "logprobs": None, "finish_reason": None}
    finish = choice.get("finish_reason", "stop")
    final = {"index": index, "text": "", "logprobs": unsent, "finish_reason": finish}
    for key, value in choice.items():
        if key not in final:
            final[key] = value  # stop_reason and vendor fields, where vLLM puts stop_reason
    yield final


def render_text_sse(stored: dict[str, Any], include_usage: bool, piece_chars: int = 64) -> bytes:
    """The stored ``text_completion`` as a stream: text pieces, a finish chunk, usage, ``[DONE]``.

    Pieces carry their share of the stored log probabilities, the finish chunk ``stop_reason``
    and the choice's other fields, as vLLM streams them; several choices are interleaved.
    """
    return render_chunks(
        stored, include_usage, "text_completion", _fresh_id(), _text_choice_chunks, piece_chars
    )
