"""Collection rows: an entry as a row, checked against the collection's limits before any call.

Milvus measures VARCHAR ``max_length`` in UTF-8 bytes, not characters: a ``model`` of 200 emoji
is 200 characters but 800 bytes.  Checking here, in bytes and against the limits the collection
really has, turns such an entry into a ``too_large`` store skip instead of a failed insert.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from extproc.cache.backends.milvus.schema import REQUIRED_FIELDS
from extproc.cache.schema import CacheEntry
from extproc.errors import DataRejected, EntryTooLarge

NEVER = 2**62
"""``expires_at`` of entries without TTL, so ``expires_at > now`` needs no special case."""
VARCHAR_MAX = 65_535
"""Milvus' largest VARCHAR ``max_length`` (bytes)."""
INT64_MAX = 2**63 - 1
"""The largest value of an INT64 field (times are stored in milliseconds)."""
DEFAULT_LIMITS: dict[str, int] = {name: n for name, (_, n) in REQUIRED_FIELDS.items() if n}
"""VARCHAR field -> max_length in bytes, as the cache creates the collection."""


def utf8(name: str, value: str) -> bytes:
    """``value`` as UTF-8; :class:`DataRejected` when it is not valid Unicode text."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates ("\ud800") come through JSON escapes; Milvus cannot store them.
        raise DataRejected(f"{name} is not valid Unicode text (it holds a lone surrogate)") from None


def check_varchar(name: str, value: str, limits: Mapping[str, int]) -> None:
    """Raise :class:`EntryTooLarge` / :class:`DataRejected` if ``value`` does not fit field ``name``."""
    size = len(utf8(name, value))
    limit = limits.get(name, VARCHAR_MAX)
    if size > limit:
        raise EntryTooLarge(f"{name} is {size} bytes in UTF-8; the collection's {name} field holds {limit}")


def encode_response(response: dict[str, Any], limit: int = VARCHAR_MAX) -> str:
    """JSON text, or ``zlib:`` + base64 of the compressed JSON when it would not fit a VARCHAR."""
    text = json.dumps(response, ensure_ascii=False, separators=(",", ":"))
    try:
        raw = text.encode()
    except UnicodeEncodeError:
        # Lone surrogates: \u escapes keep the JSON exact and make it valid UTF-8.
        text = json.dumps(response, ensure_ascii=True, separators=(",", ":"))
        raw = text.encode()
    if len(raw) <= limit:
        return text
    packed = "zlib:" + base64.b64encode(zlib.compress(raw, 6)).decode()
    if len(packed) > limit:
        raise EntryTooLarge(f"response of {len(raw)} bytes does not fit Milvus even compressed")
    return packed


def decode_response(text: str) -> dict[str, Any]:
    """Inverse of :func:`encode_response`."""
    if text.startswith("zlib:"):
        text = zlib.decompress(base64.b64decode(text[5:])).decode()
    result: dict[str, Any] = json.loads(text)
    return result


def milliseconds(name: str, seconds: float) -> int:
    """Unix ``seconds`` as INT64 milliseconds; :class:`DataRejected` when out of range."""
    if not math.isfinite(seconds) or abs(seconds) >= INT64_MAX / 1000:
        # Milvus cannot parse such a number in a filter and refuses it in a row.
        raise DataRejected(f"{name} {seconds!r} is not a time Milvus can store")
    return round(seconds * 1000)  # round: imported ms survive float math


def entry_row(
    entry: CacheEntry, vector_field: str, limits: Mapping[str, int] = DEFAULT_LIMITS
) -> dict[str, Any]:
    """The collection row of ``entry``; raises before any call when a value does not fit."""
    texts = {
        "id": entry.exact_key,
        "partition_key": entry.partition,
        "model": entry.model,
        "scope": entry.scope,
        "fingerprint": entry.fingerprint,
        "prompt": entry.prompt,
    }
    for name, value in texts.items():
        check_varchar(name, value, limits)
    return {
        **texts,
        "response": encode_response(entry.response, limits.get("response", VARCHAR_MAX)),
        vector_field: np.asarray(entry.vector, dtype=np.float32).tolist(),
        "created_at": milliseconds("created_at", entry.created_at),
        "expires_at": milliseconds("expires_at", entry.expires_at) if entry.expires_at > 0 else NEVER,
    }
