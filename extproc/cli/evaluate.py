"""``semantic-cache eval``: answer correctness of the cache on labelled question pairs.

Protocol: every distinct ``a`` is stored (as the last user message of a chat request, in one
shared cache; its stored answer names that ``a``), then every ``b`` is looked up through the
same :class:`SemanticCache` the server builds (:func:`extproc.app.make_cache`: backend,
model, guards, verifier, threshold, min_confidence).  Each hit is judged by duplicate clusters
(:class:`extproc.cli.clusters.Clusters`): correct, wrong or unjudged; the strict count of the
first version (correct only when the label is 1 and the entry served is the pair's own ``a``)
is kept beside it.

A sweep needs one pass: each lookup scores every candidate at or above the lowest threshold
(``explain``), so the decision at any (threshold t, min_confidence c) is the first candidate,
best first, whose similarity reaches t and whose confidence reaches c: what the cache serves.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extproc.cache import CacheQuery, SemanticCache
from extproc.cache.guards.scripts import mostly_non_latin
from extproc.cache.volatile import volatile_prompt
from extproc.cli.clusters import Clusters
from extproc.cli.eval_report import Lookup, Pair, Report, format_report, judge_rows, pairwise
from extproc.config.settings import CacheSettings, with_overrides
from extproc.dataplane.identity import cache_query
from extproc.dataplane.processors.settings import EXACT_ONLY
from extproc.embedding.base import EncodeFn
from extproc.errors import ConfigError, NotCacheable
from extproc.protocol.openai import parse_chat_request

__all__ = ["Pair", "Report", "eval_settings", "evaluate", "format_report", "read_pairs"]

EVAL_MODEL = "semantic-cache-eval"
SWEEP = tuple(round(0.70 + 0.02 * i, 2) for i in range(15))
CONFIDENCE_SWEEP = (*(round(0.1 * i, 1) for i in range(10)), 0.95, 0.97, 0.99)
GUARD_KEYS = {
    "numbers": "guard_numbers",
    "units": "guard_units",
    "negation": "guard_negation",
    "opposites": "guard_opposites",
    "direction": "guard_direction",
    "code": "guard_code",
    "instructions": "guard_instructions",
    "content": "guard_content",
}


class ServerGate:
    """What the server decides before a lookup, so that ``eval`` decides the same: a
    time-sensitive prompt is neither looked up nor kept (``volatile_ttl_seconds`` 0), and with the
    English-only default model a prompt mostly in another script hits on exact repeats only."""

    def __init__(self, settings: CacheSettings) -> None:
        from extproc.app import reads_english_only

        self.detect = settings.volatile_detection and settings.volatile_ttl_seconds == 0
        self.english_only = reads_english_only(settings)

    def volatile(self, prompt: str) -> bool:
        """True when the server skips this prompt's lookup and store."""
        return self.detect and bool(volatile_prompt(prompt))

    def exact_only(self, prompt: str) -> bool:
        """True when the server serves this prompt its exact repeats only."""
        return self.english_only and mostly_non_latin(prompt)

    async def serves(self, cache: SemanticCache, query: str, candidate: str) -> bool:
        """Could the server serve ``candidate``'s answer for ``query`` at all?"""
        if self.volatile(query) or self.volatile(candidate):
            return False
        if query == candidate:
            return True
        if self.exact_only(query):
            return False
        return await cache.embedder.fits(query) and await cache.embedder.fits(candidate)


def read_pairs(path: str | Path, limit: int | None = None) -> list[Pair]:
    """JSON lines ``{"a", "b", "label"}`` or GPTCache's ``{"origin", "similar"}`` (all positives)."""
    try:
        return _read_pairs(path, limit)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start} of a line: {exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def _read_pairs(path: str | Path, limit: int | None) -> list[Pair]:
    pairs: list[Pair] = []
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if limit is not None and len(pairs) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"{where}: not JSON ({exc}); each line must be one JSON object") from exc
            if not isinstance(row, dict):
                raise ConfigError(f"{where}: each line must be a JSON object")
            if "origin" in row and "similar" in row:
                a, b, label = row["origin"], row["similar"], 1
            elif "a" in row and "b" in row:
                a, b, label = row["a"], row["b"], row.get("label")
            else:
                raise ConfigError(
                    f'{where}: needs "a", "b" and "label" (0 or 1), or GPTCache\'s "origin" and "similar"'
                )
            if not isinstance(a, str) or not isinstance(b, str):
                raise ConfigError(f"{where}: the two questions must be strings")
            if label not in (0, 1) or isinstance(label, bool):
                raise ConfigError(f"{where}: label must be 0 or 1, got {label!r}")
            pairs.append(Pair(a, b, int(label)))
    if not pairs:
        raise ConfigError(f"{path}: no pairs found")
    return pairs


def _query(text: str, settings: CacheSettings) -> CacheQuery:
    """The lookup key of a chat request whose last user message is ``text``, as the server builds it."""
    body = json.dumps({"model": EVAL_MODEL, "messages": [{"role": "user", "content": text}]})
    return cache_query(parse_chat_request(body.encode(), settings.fingerprint_ignore_fields), "global")


def _answer(index: int) -> dict[str, Any]:
    message = {"role": "assistant", "content": f"eval-answer:{index}"}
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
    }


async def _embed_distinct(cache: SemanticCache, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Embed each distinct text once, in length order (less padding per batch)."""
    distinct = sorted(set(texts), key=lambda t: (len(t), t))
    vectors = await cache.embedder.embed_many(distinct)
    return dict(zip(distinct, vectors, strict=True))


def eval_settings(
    settings: CacheSettings,
    pairs: int,
    threshold: float | None = None,
    guards: str | None = None,
    min_confidence: float | None = None,
    verifier_model: str | None = None,
) -> CacheSettings:
    """``settings`` made fit for an eval: room for every entry, no expiry, optional overrides."""
    changes: dict[str, Any] = {"max_entries": max(settings.max_entries, pairs + 1), "ttl_seconds": 0}
    if threshold is not None:
        changes["similarity_threshold"] = threshold
    if min_confidence is not None:
        changes["min_confidence"] = min_confidence
    if guards is not None:
        names = [] if guards.strip() in ("", "none") else [g.strip() for g in guards.split(",")]
        if names == ["all"]:
            names = list(GUARD_KEYS)
        unknown = [n for n in names if n not in GUARD_KEYS]
        if unknown:
            raise ConfigError(
                f"--guards: unknown {', '.join(unknown)}; use none, all, or a list of {', '.join(GUARD_KEYS)}"
            )
        changes |= {key: name in names for name, key in GUARD_KEYS.items()}
        if not names:  # cosine alone: no user verifier, no learned verifier
            changes |= {"verifier": "", "verifier_model": ""}
    if verifier_model is not None:
        changes["verifier_model"] = "" if verifier_model == "none" else verifier_model
    return with_overrides(settings, **changes)


async def evaluate(
    settings: CacheSettings,
    pairs: Sequence[Pair],
    thresholds: Sequence[float] = (),
    model: tuple[EncodeFn, int] | None = None,
    concurrency: int = 64,
    confidences: Sequence[float] = (),
    with_pairwise: bool = False,
) -> Report:
    """Run the protocol over ``pairs`` with the cache the server would build from ``settings``;
    rows for each of ``thresholds`` (at the config's min_confidence) and each of ``confidences``
    (at the config's threshold)."""
    from extproc.app import make_cache

    started = time.perf_counter()
    threshold, floor = round(settings.similarity_threshold, 4), round(settings.min_confidence, 4)
    levels = sorted(
        {(round(t, 4), floor) for t in (*thresholds, threshold)}
        | {(threshold, round(c, 4)) for c in confidences}
    )
    cache = await make_cache(settings, model)
    try:
        return await _run(cache, settings, pairs, levels, concurrency, started, with_pairwise)
    finally:
        await cache.close()


async def _run(
    cache: SemanticCache,
    settings: CacheSettings,
    pairs: Sequence[Pair],
    levels: list[tuple[float, float]],
    concurrency: int,
    started: float,
    with_pairwise: bool,
) -> Report:
    gate_of = ServerGate(settings)
    usable: list[tuple[Pair, CacheQuery, CacheQuery]] = []
    for pair in pairs:
        try:
            qa, qb = _query(pair.a, settings), _query(pair.b, settings)
        except NotCacheable:  # an empty question cannot be stored or looked up
            continue
        usable.append((Pair(qa.prompt, qb.prompt, pair.label), qa, qb))
    stored: dict[str, int] = {}
    for _, qa, _ in usable:
        stored.setdefault(qa.prompt, len(stored))
    a_queries = {qa.prompt: qa for _, qa, _ in usable}
    vectors = await _embed_distinct(cache, [*stored, *(qb.prompt for _, _, qb in usable)])
    for text in stored:
        if not gate_of.volatile(text):  # the server keeps no answer to a time-sensitive prompt
            await cache.store(a_queries[text], _answer(stored[text]), vectors[text])

    lookup_started = time.perf_counter()
    gate = asyncio.Semaphore(max(1, concurrency))
    latencies: list[float] = []
    rejections: Counter[str] = Counter()
    lowest = min(t for t, _ in levels)

    async def lookup(pair: Pair, qb: CacheQuery) -> Lookup:
        if gate_of.volatile(qb.prompt):  # the server does not look it up
            return Lookup(pair, ())
        async with gate:
            t0 = time.perf_counter()
            result = await cache.check(
                qb,
                threshold=EXACT_ONLY if gate_of.exact_only(qb.prompt) else lowest,
                vector=vectors[qb.prompt],
                min_confidence=0.0,
                explain=True,
            )
            latencies.append((time.perf_counter() - t0) * 1000)
        rejections.update(result.rejections)
        if result.match == "exact":
            return Lookup(pair, ((result.entry.prompt, 1.0, 1.0),)) if result.entry else Lookup(pair, ())
        return Lookup(
            pair,
            tuple((e.prompt, sim, conf) for e, sim, conf in result.scored),
            tuple(dict.fromkeys(result.rejections)),
            result.rejected_similarity,
            result.rejected_prompt,
        )

    lookups = list(await asyncio.gather(*(lookup(pair, qb) for pair, _, qb in usable)))
    lookup_seconds = time.perf_counter() - lookup_started
    rows = judge_rows(lookups, levels, Clusters(lk.pair for lk in lookups))
    scores = await _pairwise(cache, settings, lookups, vectors, gate_of) if with_pairwise else {}
    positives = sum(p.label for p, _, _ in usable)
    wall = time.perf_counter() - started
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    return Report(
        pairs=len(usable),
        positives=positives,
        negatives=len(usable) - positives,
        stored=len(stored),
        skipped=len(pairs) - len(usable),
        guards=[g.name for g in cache.guards],
        verifier=settings.verifier_model,
        threshold=round(settings.similarity_threshold, 4),
        min_confidence=round(settings.min_confidence, 4),
        rows=rows,
        rejections=dict(rejections),
        wall_seconds=round(wall, 2),
        lookup_seconds=round(lookup_seconds, 2),
        queries_per_second=round(len(usable) / wall, 1) if wall else 0.0,
        latency_ms={
            "p50": round(float(np.percentile(lat, 50)), 3),
            "p99": round(float(np.percentile(lat, 99)), 3),
            "mean": round(float(lat.mean()), 3),
        },
        pairwise=scores,
        lookups=lookups,
    )


async def _pairwise(
    cache: SemanticCache,
    settings: CacheSettings,
    lookups: Sequence[Lookup],
    vectors: dict[str, np.ndarray],
    gate_of: ServerGate,
) -> dict[str, float]:
    """Each ``b`` judged against its own ``a`` with the cache's own decision on one candidate
    (:meth:`SemanticCache.judge`); the score is the confidence (the cosine without a verifier),
    0 when a guard vetoes or the server would not serve it (time-sensitive, a script the model
    cannot read, past the model's window)."""
    scores, accepted = [], []
    for lk in lookups:
        a, b = lk.pair.a, lk.pair.b
        similarity = 1.0 if a == b else float(vectors[a] @ vectors[b])
        if not await gate_of.serves(cache, b, a):
            scores.append(0.0)
            accepted.append(False)
            continue
        rejected, confidence = await cache.judge(
            b, a, similarity, query_vector=vectors[b], candidate_vector=vectors[a]
        )
        score = 0.0 if rejected else (similarity if confidence is None else confidence)
        scores.append(score)
        ok = not rejected and similarity >= settings.similarity_threshold
        accepted.append(ok and (confidence is None or confidence >= settings.min_confidence))
    labels = np.array([lk.pair.label for lk in lookups])
    return pairwise(np.asarray(scores), np.asarray(accepted, dtype=bool), labels)
