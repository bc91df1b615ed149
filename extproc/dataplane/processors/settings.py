"""What settings one request runs under: its policy, its scope, its freshness limits.

A mixin of the caching processors (chat, completions, responses): the state it reads and
writes (``_route``, ``_headers``, ``_fresh``, ``_no_cache``, ``_storing``…) is theirs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from extproc.dataplane.freshness import TTL_HEADER, Freshness, requested_ttl
from extproc.dataplane.policy import request_settings
from extproc.dataplane.shared import MAX_SCOPE_CHARS
from extproc.protocol.openai import scope_from_authorization, scope_from_header

if TYPE_CHECKING:
    from extproc.config.settings import CacheSettings
    from extproc.dataplane.decision import Decision
    from extproc.dataplane.shared import Shared
    from extproc.protocol.openai import ChatRequest


EXACT_ONLY = 2.0
"""A threshold no cosine similarity reaches: only the exact key can hit."""


class RequestSettings:
    """Policy, scope and time-sensitivity of the request a processor handles."""

    settings: CacheSettings
    shared: Shared
    decision: Decision
    _route: str
    _headers: dict[str, str]
    _scope: str
    _request: ChatRequest | None
    _fresh: Freshness
    _no_cache: bool
    _storing: bool

    if TYPE_CHECKING:  # the processor's own; never defined here (it would shadow them in the MRO)

        def _mark_bypass(self, reason: str) -> None: ...

        def _skip_store(self, reason: str) -> None: ...

    def _scope_of(self, headers: dict[str, str], settings: CacheSettings | None = None) -> str | None:
        """The request's scope under ``settings`` (the current ones by default); None: it has none."""
        settings = settings or self.settings
        mode = settings.scope_mode
        if mode == "header":
            return scope_from_header(headers.get(settings.scope_header.lower(), ""), MAX_SCOPE_CHARS)
        if mode == "authorization":
            return scope_from_authorization(headers.get("authorization"))
        return "global"

    def _policy_bypass(self, settings: CacheSettings, headers: dict[str, str]) -> str:
        """Why a request under ``settings`` bypasses the cache ("disabled", "no_scope"), or ""."""
        if not settings.enabled:
            return "disabled"
        return "no_scope" if self._scope_of(headers, settings) is None else ""

    def _apply_policy(self, model: str) -> bool:
        """Settings of the policy this model and route fall under; False when it bypasses."""
        self.settings, self.decision.policy = request_settings(self.shared.settings, self._route, model)
        reason = self._policy_bypass(self.settings, self._headers)  # it may scope by another mode
        if reason:
            self._mark_bypass(reason)
            return False
        self._scope = self._scope_of(self._headers) or ""
        # The TTL a client asks for is capped by the policy's max_ttl_seconds, known only now.
        self._fresh.ttl = requested_ttl(self._headers.get(TTL_HEADER, ""), self.settings.max_ttl_seconds)
        return True

    def _threshold(self) -> float | None:
        """The similarity a paraphrase must reach: the policy's, or above any cosine (exact only).

        The English-only default model maps most Chinese, Japanese… characters to one unknown
        token: "how do I reset my password" and "how do I delete my account" in Chinese embed
        identically (cosine 1.0). Such prompts are served on their exact repeats only.
        """
        if self.decision.non_latin and self.shared.english_only:
            return EXACT_ONLY
        if self._request is not None and self._request.quotes_prompt:
            return EXACT_ONLY  # the stored answer quotes its own prompt (echo, prompt_logprobs)
        return self.settings.similarity_threshold if self.decision.policy else None

    def _check_volatile(self, reason: str) -> None:
        """A time-sensitive prompt or answer (``reason``): shorten or skip its lookup and store."""
        if not reason or not self.settings.volatile_detection:
            return
        fresh = self._fresh
        fresh.mark_volatile(reason, self.settings.volatile_ttl_seconds, self.settings.ttl_seconds)
        self.decision.volatile = fresh.volatile
        self._no_cache = self._no_cache or fresh.no_cache
        if fresh.no_store and self._storing:
            self._skip_store("volatile")
