"""The ``verification:`` section: shadow verification of hits, the false-hit bound, entry ids.

See docs/verification.md. Off by default: ``sample_rate`` 0 sends nothing upstream and
``max_false_hit_rate`` 0 leaves serving to ``min_confidence``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extproc.config.checks import KeySpec, check_section, int_range, optional_http_url, unit_interval

ENTRY_SECRET_ENV = "SEMANTIC_CACHE_ENTRY_SECRET"
"""Environment variable overriding ``verification.entry_secret`` (Helm: from a Secret)."""


def false_hit_bound(v: Any) -> str | None:
    """``max_false_hit_rate``: 0 (off) or a rate strictly between 0 and 0.5."""
    return None if v == 0 or 0 < v < 0.5 else "must be 0 (off) or a rate between 0 and 0.5, e.g. 0.02"


@dataclass(frozen=True)
class VerificationSettings:
    """Shadow verification, the false-hit bound and the opaque entry ids of hits."""

    sample_rate: float = 0.0
    """Share of semantic hits re-asked upstream in the background (0 = none)."""
    upstream_url: str = ""
    """Base URL of the LLM server shadow requests go to (the path of the request is appended)."""
    answer_similarity: float = 0.85
    """Two answers agree when their embeddings have at least this cosine similarity."""
    max_concurrency: int = 4
    """Shadow requests in flight at once; a sampled hit beyond it is skipped, never queued."""
    max_per_minute: int = 60
    """Shadow requests started per minute at most (the upstream-cost budget)."""
    timeout_ms: int = 60_000
    """How long a shadow request may take before it counts as result="error"."""
    ca_file: str = ""
    """PEM bundle an https ``upstream_url``'s certificate must chain to ("" = the system CAs)."""
    insecure_skip_verify: bool = False
    """Accept any certificate from an https ``upstream_url`` (a test server only)."""
    replace: bool = False
    """Also store the fresh answer for the request that hit a disagreeing entry (the entry is
    deleted either way; off, the next identical request is a miss and stores its own answer)."""
    max_false_hit_rate: float = 0.0
    """δ: serve a semantic hit only when the upper bound of P(wrong) is at most this (0 = off)."""
    prior_strength: float = 10.0
    """Weight of the offline calibration in the bound's priors: the observations it is worth in a
    group's own posterior; the curve's prior precision scales with it (0 = none)."""
    entry_secret: str = ""
    """Key of the ``x-semantic-cache-entry`` ids ("" = random per process: ids from one replica
    are then refused by another)."""
    share_evidence: bool = True
    """Keep the bound's evidence in the backend too (Milvus: ``<collection>_evidence``), so that
    every replica counts every replica's outcomes and a restart keeps them."""
    evidence_max_age_days: int = 30
    """Evidence of a process that has written none for this long is dropped (it stopped)."""

    @property
    def active(self) -> bool:
        """True when anything here needs the verifier (shadowing or the bound).

        A δ set only by a policy is not seen here (policies are resolved per request): the
        evidence sync learns of it from the first decision under it."""
        return self.sample_rate > 0 or self.max_false_hit_rate > 0


VERIFICATION_KEYS: KeySpec = {
    "sample_rate": ((int, float), "a number (a share of semantic hits)", unit_interval),
    "upstream_url": (str, 'an http(s) URL or ""', optional_http_url),
    "answer_similarity": ((int, float), "a number (a cosine similarity)", unit_interval),
    "max_concurrency": (int, "an integer", int_range(1, 1024)),
    "max_per_minute": (int, "an integer (0 = no shadow request)", int_range(0, 1_000_000)),
    "timeout_ms": (int, "an integer (milliseconds)", int_range(1, 3_600_000)),
    "ca_file": (str, 'a path to a PEM file, or "" for the system CAs', None),
    "insecure_skip_verify": (bool, "true or false", None),
    "replace": (bool, "true or false", None),
    "max_false_hit_rate": ((int, float), "a number (a rate)", false_hit_bound),
    "prior_strength": (
        (int, float),
        "a number of observations",
        lambda v: None if v >= 0 else "must be >= 0",
    ),
    "entry_secret": (str, "a string (a secret)", None),
    "share_evidence": (bool, "true or false", None),
    "evidence_max_age_days": (int, "an integer (days)", int_range(1, 3650)),
}


def parse_verification(raw: Any, env: dict[str, str] | Any, errors: list[str]) -> VerificationSettings:
    """Check the ``verification:`` mapping; append one message per problem to ``errors``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append("semantic_cache.verification: must be a mapping (sample_rate, upstream_url…)")
        return VerificationSettings()
    before = len(errors)
    values = check_section(raw, VERIFICATION_KEYS, "semantic_cache.verification", errors)
    secret = env.get(ENTRY_SECRET_ENV, "")
    if secret:
        values["entry_secret"] = secret
    if values.get("sample_rate", 0) > 0 and not values.get("upstream_url"):
        errors.append(
            "semantic_cache.verification.upstream_url: required when sample_rate > 0 (the LLM "
            'server shadow requests go to, e.g. "http://vllm:8000")'
        )
    tls_problem = _tls_problem(values.get("ca_file", ""), values.get("insecure_skip_verify", False))
    if tls_problem:
        errors.append(f"semantic_cache.verification.{tls_problem}")
    if len(errors) > before:
        return VerificationSettings()
    return VerificationSettings(**values)


def _tls_problem(ca_file: str, insecure: bool) -> str:
    """Why ``ca_file`` / ``insecure_skip_verify`` cannot be used ("" when they can).

    The CA file is loaded here, once, so a missing or unreadable bundle stops the start (and
    ``check-config``) instead of failing every shadow request as result="error"."""
    if not ca_file:
        return ""
    if insecure:
        return "ca_file: set, and insecure_skip_verify: true ignores it; keep one of the two"
    if not Path(ca_file).is_file():
        return f"ca_file: {ca_file} does not exist (or is not a file)"
    try:
        ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        return f"ca_file: {ca_file} holds no usable PEM certificate ({exc})"
    return ""


def shadow_ssl(settings: VerificationSettings) -> ssl.SSLContext | bool:
    """The TLS check of shadow requests: the CA file's, none, or the system CAs (True)."""
    if settings.insecure_skip_verify:
        return False
    if settings.ca_file:
        return ssl.create_default_context(cafile=settings.ca_file)
    return True
