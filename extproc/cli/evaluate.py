"""``semantic-cache eval``: answer correctness of the cache on labelled question pairs.

Protocol: every distinct ``a`` is stored (as the last user message of a chat request, in one
shared cache; its stored answer names that ``a``), then every ``b`` is looked up through the
same :class:`SemanticCache` the server builds (:func:`extproc.app.make_cache`: backend,
model, guards, threshold).  A hit is correct only when the pair's label is 1 and the entry
served is that pair's ``a``; every other hit is wrong.

A sweep needs one pass: the cache serves the first candidate (best first) that every guard
accepts, if its similarity reaches the threshold, so the decision at any threshold t is "that
candidate, if its similarity >= t" for the candidate found with the lowest threshold.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from extproc.cache import CacheQuery, SemanticCache
from extproc.cache.schema import LookupResult
from extproc.config.settings import CacheSettings, with_overrides
from extproc.dataplane.identity import cache_query
from extproc.embedding.base import EncodeFn
from extproc.errors import ConfigError, NotCacheable
from extproc.protocol.openai import parse_chat_request

EVAL_MODEL = "semantic-cache-eval"
SWEEP = tuple(round(0.70 + 0.02 * i, 2) for i in range(15))
GUARD_KEYS = {
    "numbers": "guard_numbers",
    "units": "guard_units",
    "negation": "guard_negation",
    "opposites": "guard_opposites",
    "direction": "guard_direction",
    "code": "guard_code",
    "content": "guard_content",
}


@dataclass(frozen=True)
class Pair:
    """One labelled pair: ``a`` is stored, ``b`` is looked up; label 1 means same meaning."""

    a: str
    b: str
    label: int


def read_pairs(path: str | Path, limit: int | None = None) -> list[Pair]:
    """JSON lines ``{"a", "b", "label"}`` or GPTCache's ``{"origin", "similar"}`` (all positives)."""
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


@dataclass
class Row:
    """Counts at one threshold."""

    threshold: float
    hits: int = 0
    correct: int = 0
    wrong: int = 0
    wrong_negative: int = 0
    """Hits on the pair's own ``a`` with label 0: a look-alike served as if it were a paraphrase."""
    wrong_other: int = 0
    """Hits on another pair's ``a`` (for label-1 pairs often a paraphrase the labels do not cover)."""
    wrong_repeat: int = 0
    """Of ``wrong_other``: the entry's prompt is the query itself up to case (a repeated question)."""
    negative_hits: int = 0
    """Label-0 pairs that got any hit."""
    precision: float = 0.0
    recall: float = 0.0
    hit_rate: float = 0.0
    negative_hit_rate: float = 0.0


@dataclass(frozen=True)
class Outcome:
    """What one lookup served: the stored ``a`` text (None on a miss) and its similarity."""

    pair: Pair
    served: str | None
    similarity: float
    rejected_by: tuple[str, ...] = ()
    """Guards that turned a candidate down (the first such candidate below)."""
    rejected_similarity: float = 0.0
    rejected_prompt: str = ""
    a_prompt: str = ""
    """The pair's ``a`` as stored (normalized): what ``served`` and ``rejected_prompt`` compare to."""


@dataclass
class Report:
    """The result of one evaluation run."""

    pairs: int
    positives: int
    negatives: int
    stored: int
    skipped: int
    guards: list[str]
    threshold: float
    rows: list[Row]
    rejections: dict[str, int]
    wall_seconds: float
    lookup_seconds: float
    queries_per_second: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    """One per usable pair, at the lowest threshold (not part of the JSON output)."""

    def row(self, threshold: float) -> Row:
        """The row of ``threshold``."""
        return next(r for r in self.rows if abs(r.threshold - threshold) < 1e-9)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the headline numbers at ``threshold`` plus every row."""
        head = asdict(self.row(self.threshold))
        out = {k: v for k, v in asdict(self).items() if k not in ("rows", "outcomes")}
        return {**out, **head, "rows": [asdict(r) for r in self.rows]}


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


def _answered(response: dict[str, Any]) -> int | None:
    """Which stored ``a`` an answer belongs to (None for an answer the eval did not store)."""
    content = str(response["choices"][0]["message"].get("content") or "")
    prefix, _, index = content.partition(":")
    return int(index) if prefix == "eval-answer" and index.isdigit() else None


async def _embed_distinct(cache: SemanticCache, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Embed each distinct text once, in length order (less padding per batch)."""
    distinct = sorted(set(texts), key=len)
    vectors = await cache.embedder.embed_many(distinct)
    return dict(zip(distinct, vectors, strict=True))


def eval_settings(
    settings: CacheSettings, pairs: int, threshold: float | None = None, guards: str | None = None
) -> CacheSettings:
    """``settings`` made fit for an eval: room for every entry, no expiry, optional overrides."""
    changes: dict[str, Any] = {"max_entries": max(settings.max_entries, pairs + 1), "ttl_seconds": 0}
    if threshold is not None:
        changes["similarity_threshold"] = threshold
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
        if not names:
            changes["verifier"] = ""
    return with_overrides(settings, **changes)


async def evaluate(
    settings: CacheSettings,
    pairs: Sequence[Pair],
    thresholds: Sequence[float] = (),
    model: tuple[EncodeFn, int] | None = None,
    concurrency: int = 64,
) -> Report:
    """Run the protocol over ``pairs`` with the cache the server would build from ``settings``."""
    from extproc.app import make_cache

    started = time.perf_counter()
    levels = sorted({round(t, 4) for t in (*thresholds, settings.similarity_threshold)})
    cache = await make_cache(settings, model)
    try:
        return await _run(cache, settings, pairs, levels, concurrency, started)
    finally:
        await cache.close()


async def _run(
    cache: SemanticCache,
    settings: CacheSettings,
    pairs: Sequence[Pair],
    levels: list[float],
    concurrency: int,
    started: float,
) -> Report:
    usable: list[tuple[Pair, CacheQuery, CacheQuery]] = []
    for pair in pairs:
        try:
            usable.append((pair, _query(pair.a, settings), _query(pair.b, settings)))
        except NotCacheable:  # an empty question cannot be stored or looked up
            continue
    stored: dict[str, int] = {}
    for _, qa, _ in usable:
        stored.setdefault(qa.prompt, len(stored))
    a_queries = {qa.prompt: qa for _, qa, _ in usable}
    a_texts = list(stored)
    vectors = await _embed_distinct(cache, [*a_texts, *(qb.prompt for _, _, qb in usable)])
    for text in a_texts:
        await cache.store(a_queries[text], _answer(stored[text]), vectors[text])

    lookup_started = time.perf_counter()
    gate = asyncio.Semaphore(max(1, concurrency))
    latencies: list[float] = []
    rejections: Counter[str] = Counter()

    async def lookup(qb: CacheQuery, vector: np.ndarray) -> LookupResult:
        async with gate:
            t0 = time.perf_counter()
            result = await cache.check(qb, threshold=levels[0], vector=vector)
            latencies.append((time.perf_counter() - t0) * 1000)
        rejections.update(result.rejections)
        return result

    looked = await asyncio.gather(*(lookup(qb, vectors[qb.prompt]) for _, _, qb in usable))
    results = [
        (None, 0.0, None) if r.entry is None else (_answered(r.entry.response), r.similarity, r.entry.prompt)
        for r in looked
    ]
    lookup_seconds = time.perf_counter() - lookup_started

    positives = sum(p.label for p, _, _ in usable)
    negatives = len(usable) - positives
    rows = []
    for level in levels:
        row = Row(threshold=level)
        for (pair, qa, qb), (served, similarity, prompt) in zip(usable, results, strict=True):
            if served is None or similarity < level:
                continue
            row.hits += 1
            own = served == stored[qa.prompt]
            row.negative_hits += pair.label == 0
            if own and pair.label == 1:
                row.correct += 1
                continue
            row.wrong += 1
            if own:
                row.wrong_negative += 1
            else:
                row.wrong_other += 1
                row.wrong_repeat += prompt is not None and prompt.casefold() == qb.prompt.casefold()
        row.precision = row.correct / row.hits if row.hits else 0.0
        row.recall = row.correct / positives if positives else 0.0
        row.hit_rate = row.hits / len(usable) if usable else 0.0
        row.negative_hit_rate = row.negative_hits / negatives if negatives else 0.0
        rows.append(row)
    wall = time.perf_counter() - started
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    return Report(
        pairs=len(usable),
        positives=positives,
        negatives=negatives,
        stored=len(stored),
        skipped=len(pairs) - len(usable),
        guards=[g.name for g in cache.guards],
        threshold=round(settings.similarity_threshold, 4),
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
        outcomes=[
            Outcome(
                pair,
                a_texts[served] if served is not None else None,
                similarity,
                tuple(dict.fromkeys(r.rejections)),
                r.rejected_similarity,
                r.rejected_prompt,
                qa.prompt,
            )
            for (pair, qa, _), (served, similarity, _), r in zip(usable, results, looked, strict=True)
        ],
    )


def format_report(report: Report, sweep: bool) -> str:
    """Human-readable summary, and the table over thresholds when ``sweep``."""
    r = report.row(report.threshold)
    lines = [
        f"pairs {report.pairs} (positives {report.positives}, negatives {report.negatives}, "
        f"skipped {report.skipped}); stored {report.stored} distinct a",
        f"guards: {', '.join(report.guards) or 'none (cosine only)'}",
        f"threshold {report.threshold:.2f}: hits {r.hits}, correct {r.correct}, wrong {r.wrong} "
        f"(look-alike {r.wrong_negative}, other entry {r.wrong_other}, of which repeats {r.wrong_repeat})",
        "  (look-alike: a label-0 pair's own a served; other entry: another pair's a served; repeats: "
        "that entry is the question itself up to case, e.g. a question asked twice in the file)",
        f"precision {r.precision:.4f}  recall {r.recall:.4f}  hit rate {r.hit_rate:.4f}  "
        f"negative hit rate {r.negative_hit_rate:.4f}",
        f"wall {report.wall_seconds:.1f}s, lookups {report.lookup_seconds:.1f}s, "
        f"{report.queries_per_second:.1f} queries/s, lookup latency p50 {report.latency_ms['p50']:.2f} ms "
        f"p99 {report.latency_ms['p99']:.2f} ms",
    ]
    if report.rejections:
        lines.append(
            "guard rejections: " + ", ".join(f"{k} {v}" for k, v in sorted(report.rejections.items()))
        )
    if sweep:
        lines.append("")
        lines.append(
            "| threshold | hits | correct | wrong | look-alike | other | precision | recall | hit rate |"
        )
        lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in report.rows:
            lines.append(
                f"| {row.threshold:.2f} | {row.hits} | {row.correct} | {row.wrong} | {row.wrong_negative} "
                f"| {row.wrong_other} | {row.precision:.4f} | {row.recall:.4f} | {row.hit_rate:.4f} |"
            )
    return "\n".join(lines)
