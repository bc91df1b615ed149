"""The export / import format: one JSON object per line, the same for every backend.

A line holds an entry's identity (model, scope, fingerprint, prompt and the keys derived from
them), the stored answer (a ``chat.completion``, ``text_completion`` or ``response``, by the
endpoint it was cached from), its timestamps (unix seconds, ``expires_at`` 0 = never) and its
embedding (float32 values, written with 9 significant digits so they read back exactly).
Import checks every line completely before anything is written; size limits are the target
backend's (Milvus refuses, per entry, what its columns cannot hold; memory takes what it stored).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from extproc.cache.schema import CacheEntry
from extproc.errors import NotStorable
from extproc.protocol.completions import validate_text_completion
from extproc.protocol.openai import exact_key, normalize_text, partition_key, validate_completion
from extproc.protocol.responses import validate_response

FORMAT_VERSION = 1
MAX_LINE_BYTES = 16 * 1024 * 1024
_FIELDS = frozenset(
    {
        "v",
        "model",
        "scope",
        "fingerprint",
        "partition",
        "exact_key",
        "prompt",
        "response",
        "created_at",
        "expires_at",
        "vector",
        "embedding",
    }
)
_UNIT_TOLERANCE = 1e-2
_VALIDATORS: dict[str, Callable[[Any, int], dict[str, Any]]] = {
    "chat.completion": validate_completion,
    "text_completion": validate_text_completion,
    "response": validate_response,
}
"""The storability check of each endpoint's answer, by its ``object`` (the processors' own)."""


class LineError(ValueError):
    """A line that cannot be imported; the message is the reason reported to the operator."""


def entry_to_line(entry: CacheEntry, embedding: str = "") -> str:
    """One export line (no trailing newline) for ``entry``, whose vector came from the embedding
    model ``embedding`` (named in the line when given)."""
    fields: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "model": entry.model,
        "scope": entry.scope,
        "fingerprint": entry.fingerprint,
        "partition": entry.partition,
        "exact_key": entry.exact_key,
        "prompt": entry.prompt,
        "response": entry.response,
        # Whole milliseconds as entry ids count them (round(t * 1000)): round(t, 3) differs for
        # about 1 time in 7,700, and the entry's id (x-semantic-cache-entry) changed on import.
        "created_at": round(entry.created_at * 1000) / 1000,
        "expires_at": round(entry.expires_at * 1000) / 1000,
    }
    if embedding:
        fields["embedding"] = embedding
    head = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    try:
        head.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (a JSON "\ud800" the data plane cached): \u escapes keep it exact
        # and the line valid UTF-8, so the export does not break off at this entry.
        head = json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
    vector = ",".join(map("{:.9g}".format, np.asarray(entry.vector, dtype=np.float32).tolist()))
    return f'{head[:-1]},"vector":[{vector}]}}'


def _text(data: dict[str, Any], name: str) -> str:
    # No length limit here: the target backend's (a line is at most MAX_LINE_BYTES anyway).
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise LineError(f"{name} must be a non-empty string")
    return value


def check_response(response: Any) -> None:
    """Raise :class:`LineError` unless ``response`` is a complete answer the data plane would store.

    The ``object`` picks the endpoint's check; an answer without one (an upstream that omits
    it) is checked as a chat or text completion by the shape of its first choice.
    """
    kind = response.get("object") if isinstance(response, dict) else None
    validator = _VALIDATORS.get(kind) if isinstance(kind, str) else None
    choices = response.get("choices") if isinstance(response, dict) else None
    if validator is None:
        first = choices[0] if isinstance(choices, list) and choices else None
        text = isinstance(first, dict) and "text" in first and "message" not in first
        kind = "text_completion" if text else "chat.completion"
        validator = _VALIDATORS[kind]
    try:
        validator(response, len(choices) if isinstance(choices, list) and choices else 1)
    except NotStorable as exc:
        raise LineError(f"response is not a complete {kind} ({exc.reason})") from None


def _time(data: dict[str, Any], name: str) -> float:
    value = data.get(name)
    try:  # an integer past a float's range (10**400) raises OverflowError
        seconds = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else -1.0
    except OverflowError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise LineError(f"{name} must be a number of unix seconds >= 0")
    return seconds


def _vector(value: Any, dim: int) -> np.ndarray:
    if not isinstance(value, list):
        raise LineError("vector must be a list of numbers")
    if len(value) != dim:
        raise LineError(
            f"vector has {len(value)} dimensions but this cache's embeddings have {dim}: the export "
            "comes from another embedding model; import with --reembed to embed the prompts again"
        )
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in value):
        raise LineError("vector must contain only numbers")
    try:
        vector = np.asarray(value, dtype=np.float32)
    except OverflowError:  # an integer past a float's range
        raise LineError("vector must contain only numbers of a float's range") from None
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or abs(norm - 1.0) > _UNIT_TOLERANCE:
        raise LineError(
            f"vector is not unit length (norm {norm:.4g}): not a normalized sentence embedding; "
            "import with --reembed to embed the prompts again"
        )
    return vector


def line_to_entry(
    text: str | bytes, dim: int, now: float, reembed: bool = False, ttl_seconds: int = 0, embedding: str = ""
) -> CacheEntry:
    """Parse and check one line; raise :class:`LineError` with the reason.

    ``embedding``: the model this cache embeds with; a line whose vector another model made
    (its ``embedding`` field, when it has one) is refused unless ``reembed``.

    With ``reembed`` the line's vector is ignored (the caller embeds the prompt) and the entry
    comes back with an empty vector.  With ``ttl_seconds`` > 0 (the cache's TTL) the entry
    expires at the latest ``now + ttl_seconds``, and ``created_at`` is never later than ``now``.
    """
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LineError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise LineError("not an entry: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise LineError(f"must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise LineError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    if data.get("v", FORMAT_VERSION) != FORMAT_VERSION:
        raise LineError(f"format version {data.get('v')!r} is not supported; this server reads 1")
    source = data.get("embedding", embedding)
    if not reembed and embedding and source != embedding:
        raise LineError(
            f"the vector comes from the embedding model {source!r}, this cache embeds with "
            f"{embedding!r}: import with --reembed to embed the prompts again"
        )
    model = _text(data, "model")
    scope = _text(data, "scope")
    fingerprint = _text(data, "fingerprint")
    prompt = _text(data, "prompt")
    if normalize_text(prompt) != prompt:
        raise LineError("prompt is not normalized (whitespace runs and ends must be trimmed, Unicode NFC)")
    partition = partition_key(model, scope, fingerprint)
    key = exact_key(model, scope, fingerprint, prompt)
    if data.get("partition", partition) != partition:
        raise LineError("partition does not match H(model, scope, fingerprint): the line was altered")
    if data.get("exact_key", key) != key:
        raise LineError("exact_key does not match H(model, scope, fingerprint, prompt): the line was altered")
    response = data.get("response")
    check_response(response)
    created_at = _time(data, "created_at")
    expires_at = _time(data, "expires_at") if "expires_at" in data else 0.0
    if 0 < expires_at <= now:
        raise LineError(f"expired {now - expires_at:.0f}s ago (expires_at {expires_at:.0f})")
    if ttl_seconds > 0 and (expires_at == 0 or expires_at > now + ttl_seconds):
        # The file is not trusted to extend the cache's TTL: an edited line with expires_at 0
        # would otherwise keep its answer forever.
        expires_at = now + ttl_seconds
    created_at = min(created_at, now)  # a future time would also dodge oldest-first eviction
    if reembed:
        vector = np.empty(0, dtype=np.float32)
    elif "vector" not in data:
        raise LineError("vector is missing; import with --reembed to embed the prompt")
    else:
        vector = _vector(data["vector"], dim)
    return CacheEntry(
        id=key,
        model=model,
        scope=scope,
        fingerprint=fingerprint,
        partition=partition,
        exact_key=key,
        prompt=prompt,
        response=response,  # type: ignore[arg-type]
        vector=vector,
        created_at=created_at,
        expires_at=expires_at,
    )
