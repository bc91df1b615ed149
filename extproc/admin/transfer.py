"""The export / import format: one JSON object per line, the same for every backend.

A line holds an entry's identity (model, scope, fingerprint, prompt and the keys derived from
them), the stored ``chat.completion``, its timestamps (unix seconds, ``expires_at`` 0 = never)
and its embedding (float32 values, written with 9 significant digits so they read back
exactly).  Import checks every line completely before anything is written.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from extproc.cache.schema import CacheEntry
from extproc.errors import NotStorable
from extproc.protocol.openai import exact_key, normalize_text, partition_key, validate_completion

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
    }
)
_UNIT_TOLERANCE = 1e-2


class LineError(ValueError):
    """A line that cannot be imported; the message is the reason reported to the operator."""


def entry_to_line(entry: CacheEntry) -> str:
    """One export line (no trailing newline) for ``entry``."""
    head = json.dumps(
        {
            "v": FORMAT_VERSION,
            "model": entry.model,
            "scope": entry.scope,
            "fingerprint": entry.fingerprint,
            "partition": entry.partition,
            "exact_key": entry.exact_key,
            "prompt": entry.prompt,
            "response": entry.response,
            "created_at": round(entry.created_at, 3),
            "expires_at": round(entry.expires_at, 3),
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )
    vector = ",".join(map("{:.9g}".format, np.asarray(entry.vector, dtype=np.float32).tolist()))
    return f'{head[:-1]},"vector":[{vector}]}}'


def _text(data: dict[str, Any], name: str, limit: int = 65_535) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise LineError(f"{name} must be a non-empty string")
    if len(value.encode("utf-8", "surrogatepass")) > limit:
        raise LineError(f"{name} is longer than {limit} bytes")
    return value


def _time(data: dict[str, Any], name: str) -> float:
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise LineError(f"{name} must be a number of unix seconds >= 0")
    return float(value)


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
    vector = np.asarray(value, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or abs(norm - 1.0) > _UNIT_TOLERANCE:
        raise LineError(
            f"vector is not unit length (norm {norm:.4g}): not a normalized sentence embedding; "
            "import with --reembed to embed the prompts again"
        )
    return vector


def line_to_entry(
    text: str | bytes, dim: int, now: float, reembed: bool = False, ttl_seconds: int = 0
) -> CacheEntry:
    """Parse and check one line; raise :class:`LineError` with the reason.

    With ``reembed`` the line's vector is ignored (the caller embeds the prompt) and the entry
    comes back with an empty vector.  With ``ttl_seconds`` > 0 (the cache's TTL) the entry
    expires at the latest ``now + ttl_seconds``, and ``created_at`` is never later than ``now``.
    """
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LineError(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LineError(f"must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise LineError(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
    if data.get("v", FORMAT_VERSION) != FORMAT_VERSION:
        raise LineError(f"format version {data.get('v')!r} is not supported; this server reads 1")
    model = _text(data, "model", 512)
    scope = _text(data, "scope", 512)
    fingerprint = _text(data, "fingerprint", 64)
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
    try:
        choices = response.get("choices") if isinstance(response, dict) else None
        validate_completion(response, len(choices) if isinstance(choices, list) and choices else 1)
    except NotStorable as exc:
        raise LineError(f"response is not a complete chat.completion ({exc.reason})") from None
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
