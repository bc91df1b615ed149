"""Freshness of one request: what the client allows (``cache-control``, ``x-semantic-cache-ttl``).

``cache-control: max-age=N`` serves only an entry younger than N seconds (``max-age=0``: none,
like ``no-cache``); ``no-cache`` skips the lookup, ``no-store`` the store.  ``x-semantic-cache-ttl:
N`` asks that this answer be kept N seconds, never longer than ``max_ttl_seconds``.  A time-
sensitive prompt (:mod:`extproc.cache.volatile`) is looked up and kept for at most
``volatile_ttl_seconds`` (0: neither).
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extproc.config.checks import MAX_SECONDS

TTL_HEADER = "x-semantic-cache-ttl"
_SECONDS = re.compile(r"\d{1,10}")
_DIGITS = re.compile(r"[0-9]+")


@dataclass
class Freshness:
    """One request's limits: serve entries up to ``max_age`` seconds old, keep the answer ``ttl``."""

    no_cache: bool = False
    no_store: bool = False
    max_age: int | None = None
    """Serve only entries younger than this many seconds (None: any live entry)."""
    ttl: int | None = None
    """Seconds to keep the answer (None: the configured ``ttl_seconds``)."""
    volatile: str = ""
    """Why the prompt or answer is time-sensitive, or ""."""

    def limit_age(self, seconds: int) -> None:
        """Tighten ``max_age`` to at most ``seconds`` (0 turns the lookup off)."""
        self.max_age = seconds if self.max_age is None else min(self.max_age, seconds)
        if self.max_age == 0:
            self.no_cache = True

    def mark_volatile(self, reason: str, volatile_ttl: int, base_ttl: int) -> None:
        """A time-sensitive prompt or answer: served and kept ``volatile_ttl`` at most (0: neither)."""
        self.volatile = self.volatile or reason
        if volatile_ttl == 0:
            self.no_cache = self.no_store = True
        else:
            self.limit_age(volatile_ttl)
            self.limit_ttl(volatile_ttl, base_ttl)

    def limit_ttl(self, seconds: int, base: int) -> None:
        """Keep the answer at most ``seconds`` (``base`` is the configured TTL, 0 = never expires)."""
        current = self.ttl if self.ttl is not None else base
        self.ttl = seconds if current == 0 else min(current, seconds)


def answer_text(completion: Mapping[str, Any]) -> str:
    """The text of a stored ``chat.completion``, ``text_completion`` or ``response``."""
    parts: list[str] = []
    for item in completion.get("output") or ():
        for part in item.get("content") or () if isinstance(item, dict) else ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
        text = choice.get("text") if text is None else text
        if isinstance(text, str):
            parts.append(text)
    return "\n".join(parts)


def parse_freshness(cache_control: str) -> Freshness:
    """The limits a request's ``cache-control`` asks for; malformed directives are ignored
    (RFC 9111 §5.2). The TTL it asks for depends on its policy: :func:`requested_ttl`."""
    fresh = Freshness()
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            fresh.no_cache = True
        elif name == "no-store":
            fresh.no_store = True
        elif name == "max-age":
            value = value.strip().strip('"')
            if _SECONDS.fullmatch(value):
                fresh.limit_age(int(value))  # repeated: the strictest wins
    return fresh


def upstream_lifetime(headers: Mapping[str, str], now: float | None = None) -> int | None:
    """How long the upstream lets a shared cache keep its answer (RFC 9111 §4.2), in seconds from
    now: 0 for ``no-store`` or ``private`` (one user's answer), else ``s-maxage`` (a shared cache's
    own) or ``max-age``, without them ``Expires`` less ``Date``, minus the ``Age`` the answer has
    already spent in a cache before us; None when it sets no limit. An ``Expires`` that is not a
    date ("0") means already expired (§5.3). ``no-cache`` sets none: the cache cannot revalidate an
    answer, and event-stream servers send it only to keep proxies from buffering the stream."""
    lifetime = _cache_control_lifetime(headers.get("cache-control", ""))
    if lifetime is None and "expires" in headers:
        expires = _http_date(headers["expires"])
        sent = _http_date(headers.get("date", ""))
        now = time.time() if now is None else now
        lifetime = 0 if expires is None else max(0, int(expires - (sent if sent is not None else now)))
    age = headers.get("age", "").strip()
    if lifetime and _DIGITS.fullmatch(age):
        lifetime = max(0, lifetime - (int(age) if len(age) <= 12 else MAX_SECONDS))
    return lifetime


def _cache_control_lifetime(cache_control: str) -> int | None:
    shared_max: int | None = None
    max_age: int | None = None
    for directive in cache_control.split(","):
        name, _, value = directive.strip().partition("=")
        name, value = name.strip().lower(), value.strip().strip('"')
        if name in ("no-store", "private"):
            return 0
        if name in ("s-maxage", "max-age") and _DIGITS.fullmatch(value):
            seconds = min(int(value), MAX_SECONDS) if len(value) <= 12 else MAX_SECONDS
            if name == "s-maxage":
                shared_max = seconds if shared_max is None else min(shared_max, seconds)
            else:
                max_age = seconds if max_age is None else min(max_age, seconds)
    return shared_max if shared_max is not None else max_age


def _http_date(value: str) -> float | None:
    """An HTTP date (``Sun, 06 Nov 1994 08:49:37 GMT`` and the older forms) as Unix time, or None."""
    try:
        parsed = email.utils.parsedate_tz(value.strip())
        return float(email.utils.mktime_tz(parsed)) if parsed else None
    except (TypeError, ValueError, OverflowError):
        return None


def requested_ttl(header: str, max_ttl_seconds: int) -> int | None:
    """Seconds ``x-semantic-cache-ttl`` asks to keep the answer, at most ``max_ttl_seconds``
    (None: the configured ``ttl_seconds``; also when ``max_ttl_seconds`` is 0 or the value is
    not a positive integer). A value too long to read is more than any limit: the limit."""
    header = header.strip()
    if max_ttl_seconds <= 0 or not _DIGITS.fullmatch(header) or not header.strip("0"):
        return None
    return max_ttl_seconds if len(header) > 12 else min(int(header), max_ttl_seconds)
