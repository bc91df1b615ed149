"""Does serving under a false-hit bound δ keep the realized wrong-hit rate ≤ δ, and at what cost?

A simulation on Quora question pairs where the "upstream" answers a question with the name of
its duplicate cluster (union-find over the label-1 pairs, :mod:`extproc.cli.clusters`), so
whether a cached answer agrees with the fresh one is known exactly. The questions of the
held-out 20 % of the pairs (the verifier's test split, by connected component) arrive as
traffic that repeats itself (Zipf-popular clusters, any of a cluster's wordings) and go through
:class:`~extproc.cache.SemanticCache` directly (memory backend, the packaged model and learned
verifier; embeddings computed once, kept in ``~/.cache/semantic-cache-bench``):

- **bound δ** — the processor's rule (:class:`~extproc.dataplane.verification.Outcomes`): a
  semantic candidate is served only when the 99 % upper bound of its P(wrong) is ≤ δ (``--level``); otherwise
  the request goes upstream (a miss) and the comparison is learned (explore). A share
  ``--sample-rate`` of served semantic hits is shadow-verified (one extra upstream call each; a
  disagreeing entry is deleted and the fresh answer stored).
- **static m** — ``min_confidence: m``, no verification, for a grid of m.

For each δ it prints the realized wrong-hit rate (wrong semantic hits / semantic hits served,
with its 95 % Wilson interval) overall and per window of the stream, the hit rate, the upstream
calls verification added, and the static setting of equal (or lower) realized error with its
hit rate. ``--per-request`` bounds the error per request instead, as vCache does (a candidate
whose bound is above δ is still served with probability δ / bound), and compares by wrong hits
/ requests that had a semantic candidate. ``--judged`` judges each comparison as ``eval`` judges
a hit: wrong only when a label-0 pair joins the two clusters, right in one cluster, and unknown
otherwise (two questions nobody compared: never learned from, counted apart, left out of the
wrong-hit rate).

``--replicas N`` sends the requests to N processes in turn over the one cache (as replicas
behind a Service over Milvus) and runs each δ twice: the evidence shared between them, and kept
per process. ``--ttl N`` expires each entry N requests after it was stored, as ``ttl_seconds``
does at a steady request rate: questions then come back as candidates, and the rule's learning
is spread over a stream that keeps bringing them.

    python -m bench.verification_sim [--pairs FILE] [--length N] [--zipf S] [--per-request] [--judged]
                                     [--replicas N] [--ttl N]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import math
import random
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from extproc.cache import CacheQuery, MemoryBackend, SemanticCache
from extproc.cache.guards import build_guards
from extproc.cache.guards.content import WordVectorCache
from extproc.cache.guards.learned import BUILTIN, ConfidenceScorer, load_model
from extproc.cli.clusters import Clusters, UnionFind, split_by_component
from extproc.cli.evaluate import read_pairs
from extproc.cli.train_verifier import SHARES
from extproc.config.settings import CacheSettings
from extproc.dataplane.verification import Outcomes
from extproc.dataplane.verification.entry_ids import entry_ref
from extproc.dataplane.verification.outcomes import BOUND_LEVEL
from extproc.dataplane.verification.stats import Z
from extproc.embedding.batcher import Embedder
from extproc.embedding.loader import load_sentence_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "qqp-dev.jsonl"
SAMPLE = ROOT / "bench" / "data" / "qqp-sample.jsonl"
MODEL = "qqp"
DELTAS = (0.01, 0.02, 0.05, 0.1, 0.2)
"""The issue's three, and two this data can meet with semantic hits (its floor is about 5 %)."""
STATIC = (0.5, 0.7, 0.8, 0.85, 0.9, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96)
"""min_confidence of the static runs: finer where this data's error falls fastest (0.9 to 0.96)."""
WINDOWS = 5
DRIFT_AT = 0.4
"""With --drift: where in the stream the answers change (the start of the third window)."""
DRIFT_FROM = 0.9
"""With --drift: the confidence from which candidates turn wrong (the ones a bound serves)."""
SYNC_REQUESTS = 100
"""With --replicas: requests between two evidence syncs (the processor syncs every 10 s)."""


class MemoScorer:
    """The learned verifier, each (query, candidate) pair scored once across every run."""

    def __init__(self, scorer: ConfidenceScorer) -> None:
        self.scorer = scorer
        self.memo: dict[tuple[str, str], float] = {}

    async def score(self, query: str, candidate: str, similarity: float, **vectors: Any) -> float:
        """The wrapped scorer's confidence, memoized (``vectors``: the two embeddings it may read)."""
        key = (query, candidate)
        if key not in self.memo:
            self.memo[key] = await self.scorer.score(query, candidate, similarity, **vectors)
        return self.memo[key]


@dataclass
class Run:
    """What one policy did over the stream."""

    name: str
    queries: int = 0
    hits: int = 0
    semantic: int = 0
    wrong: int = 0
    explored: int = 0
    decided: int = 0
    """Requests that had a semantic candidate past the guards (served or not): the per-request
    error's denominator."""
    verify_calls: int = 0
    healed: int = 0
    unjudged: int = 0
    """Semantic hits whose two questions no label compares (``--judged``): not in the rate."""
    windows: list[list[int]] = field(default_factory=list)
    """Per window of the stream: [semantic hits, wrong ones, hits, queries]."""
    outcomes: Outcomes | None = None
    """What the bound learned (bound runs)."""

    @property
    def judged(self) -> int:
        """Semantic hits whose rightness is known."""
        return self.semantic - self.unjudged

    @property
    def wrong_rate(self) -> float:
        """Wrong semantic hits / semantic hits served (judged ones, with ``--judged``)."""
        return self.wrong / self.judged if self.judged else 0.0

    @property
    def request_error(self) -> float:
        """Wrong semantic hits / requests with a semantic candidate (vCache's error rate: a
        request sent upstream is answered right)."""
        return self.wrong / self.decided if self.decided else 0.0

    @property
    def hit_rate(self) -> float:
        """Hits (exact and semantic) / queries."""
        return self.hits / self.queries if self.queries else 0.0

    @property
    def upstream_calls(self) -> int:
        """Misses plus shadow verifications: every call the upstream served."""
        return self.queries - self.hits + self.verify_calls


def wilson(wrong: int, total: int) -> tuple[float, float]:
    """The two-sided 90 % Wilson interval (each side 95 %, as the bound) of wrong / total."""
    if not total:
        return 0.0, 1.0
    p, z2 = wrong / total, Z * Z
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    spread = Z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    return max(0.0, centre - spread), min(1.0, centre + spread)


def stream(
    pairs_file: Path, length: int, zipf: float, seed: int
) -> tuple[list[str], Clusters, dict[str, str]]:
    """``length`` questions of the held-out pairs drawn as traffic that repeats itself, the
    clusters of every pair of the file, and each question's topic.

    A topic is a connected component of the labelled pairs (label 0 or 1): the questions Quora
    put side by side. Each topic is its own cache partition (like a tenant or a system prompt),
    so every candidate a lookup sees is linked to the query by a path of labelled pairs; not
    always by one (two questions each labelled different from a third were never compared with
    each other: ``--judged`` leaves those out). A request picks a topic by a Zipf law over a
    random ranking of the topics, then one of its questions uniformly.
    """
    pairs = read_pairs(pairs_file)
    clusters = Clusters(pairs)
    test = split_by_component(pairs, SHARES)[-1] if len(pairs) > 5000 else range(len(pairs))
    components = UnionFind()
    for i in test:
        components.union(pairs[i].a, pairs[i].b)
    topics: dict[str, list[str]] = {}
    for text in dict.fromkeys(t for i in test for t in (pairs[i].a, pairs[i].b)):
        topics.setdefault(components.find(text), []).append(text)
    rng = random.Random(seed)
    ranked = sorted(topics)
    rng.shuffle(ranked)
    weights = [1.0 / (rank + 1) ** zipf for rank in range(len(ranked))]
    chosen = rng.choices(ranked, weights, k=length)
    topic_of = {text: topic for topic, members in topics.items() for text in members}
    return [rng.choice(topics[t]) for t in chosen], clusters, topic_of


def wrong_answer(clusters: Clusters, cached: str, truth: str, judged: bool) -> bool | None:
    """Whether the cached answer (a cluster) is wrong for a question of cluster ``truth``: any
    other cluster is, or with ``judged`` only one a label-0 pair sets apart (None: unknown)."""
    if cached == truth or not judged:
        return cached != truth
    return True if (min(cached, truth), max(cached, truth)) in clusters.apart else None


def turns_wrong(cached: str, asked: str, rate: float) -> bool:
    """Whether serving the answer of ``cached`` for ``asked`` turned wrong (a fixed draw per pair)."""
    draw = int.from_bytes(hashlib.sha256(f"{cached}\x00{asked}".encode()).digest()[:8], "big")
    return draw / 2**64 < rate


def query_of(text: str, topic: str) -> CacheQuery:
    """The cache query of a question: one model, its topic's partition."""
    key = hashlib.sha256(f"{topic}\x00{text}".encode()).hexdigest()
    return CacheQuery(MODEL, "global", "f", text, topic, key)


async def simulate(
    texts: Sequence[str],
    vectors: np.ndarray,
    clusters: Clusters,
    topic_of: dict[str, str],
    parts: tuple[Embedder, list[Any], MemoScorer],
    name: str,
    delta: float = 0.0,
    sample_rate: float = 0.0,
    min_confidence: float = 0.0,
    seed: int = 0,
    level: float = BOUND_LEVEL,
    per_request: bool = False,
    judged: bool = False,
    replicas: int = 1,
    shared: bool = True,
    drift: float = 0.0,
    detect_changes: bool = True,
    ttl: int = 0,
) -> Run:
    """Drive one policy over the stream through a fresh cache. ``per_request``: the bound
    promises ≤ δ per request, as vCache does, so a candidate whose P(wrong) bound u is above δ is
    still served with probability δ / u (else explored). ``judged``: see :func:`wrong_answer`.
    ``replicas``: processes taking the requests in turn over the one cache, each with its own
    outcomes; ``shared``: each adopts the others' evidence every SYNC_REQUESTS requests, as the
    processor's evidence sync does (:mod:`extproc.dataplane.verification.evidence`). ``drift``:
    from DRIFT_AT of the stream on, a candidate at confidence DRIFT_FROM or more that was right
    turns wrong at this rate (the answers changed under the cache); ``detect_changes``: the δ
    rule's change detection on or off. ``ttl``: an entry expires this many requests after it was
    stored (0: never), as ``ttl_seconds`` does at a steady request rate."""
    embedder, guards, scorer = parts
    cache = SemanticCache(
        MemoryBackend(vectors.shape[1], len(texts) + 1), embedder, 0.8, 10, 0, guards, scorer, min_confidence
    )
    fleet = [Outcomes(level=level, detect_changes=detect_changes) for _ in range(replicas)]
    rng, run = random.Random(seed), Run(name)
    run.outcomes = fleet[0]
    size = math.ceil(len(texts) / WINDOWS)
    expiring: deque[tuple[int, str, int]] = deque()  # (request it expires at, key, request stored)
    stored_at: dict[str, int] = {}  # key -> the request that stored its current version
    for i, text in enumerate(texts):
        while expiring and expiring[0][0] <= i:
            _, key, when = expiring.popleft()
            if stored_at.get(key) == when:  # not a version stored since (after a heal): that one stays
                del stored_at[key]
                await cache.forget(key)
        outcomes = fleet[i % replicas]
        if shared and replicas > 1 and i % SYNC_REQUESTS == 0:
            rows = [o.export() for o in fleet]
            for k, o in enumerate(fleet):
                o.adopt(rows[:k] + rows[k + 1 :])
        if i % size == 0:
            run.windows.append([0, 0, 0, 0])
        window = run.windows[-1]
        window[3] += 1
        run.queries += 1
        query, truth = query_of(text, topic_of[text]), clusters.cluster(text)
        lookup = await cache.check(query, vector=vectors[i], min_confidence=min_confidence)
        entry = lookup.entry
        semantic = entry is not None and lookup.match == "semantic"
        score = lookup.confidence if lookup.confidence is not None else lookup.similarity
        similarity = lookup.similarity
        run.decided += semantic or "confidence" in lookup.rejections
        own = entry_ref(entry.exact_key, entry.created_at) if entry is not None else ""
        changed = drift > 0 and i >= DRIFT_AT * len(texts) and score is not None and score >= DRIFT_FROM
        turned = changed and entry is not None and turns_wrong(entry.prompt, text, drift)
        upper = outcomes.upper(MODEL, score, own, similarity) if semantic and delta else 0.0
        if upper > delta and not (per_request and rng.random() < delta / upper):
            run.explored += 1  # the request goes upstream; its answer is compared with the candidate's
            wrong = wrong_answer(clusters, entry.response["cluster"], truth, judged)
            wrong = True if turned and wrong is False else wrong
            if wrong is not None:
                outcomes.learn(MODEL, own, score, wrong, similarity)
            entry = None
        if entry is None:
            await cache.store(query, {"cluster": truth}, vectors[i], ttl_seconds=0)
            if ttl:
                expiring.append((i + ttl, query.exact_key, i))
                stored_at[query.exact_key] = i
            continue
        run.hits += 1
        window[2] += 1
        if not semantic:
            continue
        wrong = wrong_answer(clusters, entry.response["cluster"], truth, judged)
        wrong = True if turned and wrong is False else wrong
        run.semantic += 1
        if wrong is None:
            run.unjudged += 1  # nobody compared the two questions: neither right nor wrong
            continue
        run.wrong += wrong
        window[0] += 1
        window[1] += wrong
        if delta and rng.random() < sample_rate:
            run.verify_calls += 1  # shadow verification: one more upstream call
            outcomes.learn(MODEL, own, score, wrong, similarity)
            if wrong:  # heal: the entry goes, the fresh answer takes its place
                run.healed += 1
                await cache.forget(entry.exact_key, entry.created_at)
                await cache.store(query, {"cluster": truth}, vectors[i], ttl_seconds=0)
                if ttl:
                    expiring.append((i + ttl, query.exact_key, i))
                    stored_at[query.exact_key] = i
    return run


def describe(run: Run) -> str:
    """One line: hit rate, realized wrong-hit rate with its interval, explorations, verifications."""
    lo, hi = wilson(run.wrong, run.judged)
    unjudged = f" ({run.unjudged} unjudged)" if run.unjudged else ""
    return (
        f"{run.name:<12} hit rate {run.hit_rate:6.2%}  semantic hits {run.semantic:5d} "
        f"({run.semantic / max(1, run.queries):5.2%}){unjudged}  wrong "
        f"{run.wrong:4d} = {run.wrong_rate:6.2%} [{lo:.2%}, {hi:.2%}]  explored {run.explored:5d}  "
        f"verify calls {run.verify_calls:4d} ({run.verify_calls / max(1, run.upstream_calls):.2%} of "
        f"upstream calls)  per request {run.wrong}/{run.decided} = {run.request_error:.2%}"
    )


def best_static(static: Sequence[Run], max_error: float, per_request: bool = False) -> Run | None:
    """The static run with the highest hit rate whose realized error (per hit, or per request)
    is ≤ the given one."""
    ok = [r for r in static if (r.request_error if per_request else r.wrong_rate) <= max_error + 1e-12]
    return max(ok, key=lambda r: r.hit_rate) if ok else None


async def embeddings(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """The embeddings of ``texts``, from the disk cache when this list was embedded before."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = Path.home() / ".cache" / "semantic-cache-bench" / f"qqp-{digest}.npy"
    if path.is_file():
        return np.load(path)
    vectors = np.asarray(await embedder.embed_many(texts))
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


async def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulation and print its report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=Path, default=SHARED)
    parser.add_argument("--length", type=int, default=100_000, help="requests in the stream")
    parser.add_argument("--zipf", type=float, default=0.5, help="exponent of the topic popularity law")
    parser.add_argument("--sample-rate", type=float, default=0.05, help="shadow-verified share of hits")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--level", type=float, default=BOUND_LEVEL, help="confidence of the δ rule's bound")
    parser.add_argument(
        "--per-request",
        action="store_true",
        help="bound the error per request as vCache does (serve with probability δ / bound), not per hit",
    )
    parser.add_argument(
        "--judged",
        action="store_true",
        help="a hit is wrong only where a label-0 pair sets the two clusters apart (as eval judges)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="processes taking the requests in turn; the bound runs twice: evidence shared and per process",
    )
    parser.add_argument(
        "--drift",
        type=float,
        default=0.0,
        help="from 40 %% of the stream on, candidates at confidence ≥ 0.9 that were right turn wrong "
        "at this rate",
    )
    parser.add_argument(
        "--ttl",
        type=int,
        default=0,
        help="requests an entry lives (0: forever); with a TTL, questions come back as candidates",
    )
    args = parser.parse_args(argv)
    if not args.pairs.is_file():
        if args.pairs != SHARED:
            print(f"{args.pairs} not found", file=sys.stderr)
            return 2
        print(f"{SHARED} not found: a smoke run on {SAMPLE.relative_to(ROOT)}", file=sys.stderr)
        args.pairs = SAMPLE
    started = time.perf_counter()
    texts, clusters, topic_of = stream(args.pairs, args.length, args.zipf, args.seed)
    encode, dim = load_sentence_model("all-MiniLM-L6-v2")
    embedder = Embedder(encode, dim, 64)
    distinct = list(dict.fromkeys(texts))
    by_text = dict(zip(distinct, await embeddings(embedder, distinct), strict=True))
    vectors = np.stack([by_text[t] for t in texts])
    print(
        f"{len(texts)} requests, {len(distinct)} distinct questions of {args.pairs.name} (zipf "
        f"{args.zipf}); embedded in {time.perf_counter() - started:.0f}s"
    )
    guards = await build_guards(CacheSettings(), embedder)
    scorer = MemoScorer(
        ConfidenceScorer(load_model(BUILTIN), WordVectorCache(embedder, size=len(distinct) + 1))
    )
    parts = (embedder, guards, scorer)
    sharing = ("shared", "per process") if args.replicas > 1 else ("",)
    variants = [(d, how, True) for d in DELTAS for how in sharing]
    if args.drift:  # δ ≤ 0.02 serves nothing here: each other δ with the change detection on and off
        variants = [(d, "", detect) for d in DELTAS if d >= 0.05 for detect in (True, False)]
    bound = [
        await simulate(
            texts,
            vectors,
            clusters,
            topic_of,
            parts,
            f"bound {d:g}"
            + (f" {args.replicas} replicas, {how}" if args.replicas > 1 else "")
            + ("" if detect else " without change detection"),
            d,
            args.sample_rate,
            level=args.level,
            per_request=args.per_request,
            judged=args.judged,
            replicas=args.replicas,
            shared=how == "shared",
            drift=args.drift,
            detect_changes=detect,
            ttl=args.ttl,
        )
        for d, how, detect in variants
    ]
    static = [
        await simulate(
            texts,
            vectors,
            clusters,
            topic_of,
            parts,
            f"static {m:g}",
            min_confidence=m,
            judged=args.judged,
            drift=args.drift,
            ttl=args.ttl,
        )
        for m in STATIC
    ]
    for run in static:
        print(describe(run))
    for run in bound:
        print(describe(run))
        lo, _ = wilson(run.wrong, run.decided if args.per_request else run.judged)
        print(
            "  per window (wrong / semantic hits, hit rate): "
            + "  ".join(f"{w[1]}/{w[0]} {w[2] / max(1, w[3]):.1%}" for w in run.windows)
        )
        error = run.request_error if args.per_request else run.wrong_rate
        match = best_static(static, error, args.per_request)
        vs = f"{match.name} hit rate {match.hit_rate:.2%}" if match else "no static setting is that accurate"
        delta = float(run.name.split()[1])
        held = "holds" if lo <= delta else "VIOLATED"
        found = f"; changes found {run.outcomes.changes}" if run.outcomes is not None else ""
        verdict = f"bound {held} (interval low {lo:.2%} vs δ {delta:.0%})"
        print(f"  {verdict}; static of ≤ equal error: {vs}{found}")
    print(f"elapsed {time.perf_counter() - started:.0f}s")
    embedder.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
