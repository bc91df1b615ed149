"""Open-loop load through Envoy: ``python -m bench.openloop``.

Requests are sent on a fixed schedule (request i at ``i / rate`` seconds), not when earlier ones
finish, so a slow cache cannot slow the load down and hide its own queueing (no coordinated
omission: each latency is measured from the request's scheduled time).  For each offered rate
it drives unique prompts (misses) and paraphrases of stored prompts (semantic hits) through
Envoy with the processor, and the same misses through Envoy alone, in front of the same test
upstream (in its own process); it reports p50/p99, the latency the cache adds over Envoy
alone, the outcomes and the bypass reasons the processor counted, and the knee: the highest
rate at which no lookup was shed.  The model's lone-query encode time, measured in the same
run, is the baseline every latency is also given as a ratio to.

In a deployment the clients and the LLM run on other machines; here they share the cores with
Envoy and the processor, so a sender starved of CPU measures the box as well as the cache:
``sender_late_ms`` shows how late it was, and ``p99_by_outcome`` splits the tail by what the
processor decided.  ``--outside-nice N`` (root) runs the sender and upstream at another
priority; on the 2-core machine of the notes, -10 made the cache's tail worse, not better.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from extproc.embedding.loader import load_sentence_model

from .load import Request, Sample, send
from .report import DATASET, exit_on_sigterm, machine, save, summary, table
from .stack import Processor, start_envoys, start_processor, start_upstream
from .workload import chat_body, paraphrase_pairs, read_pairs

CHAT = "/v1/chat/completions"
HEADERS = (("content-type", "application/json"),)


async def open_loop(base: str, requests: list[Request], rate: float) -> tuple[list[Sample], float]:
    """Send ``requests`` at ``rate`` per second on a fixed schedule; (samples, seconds late at most)."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    samples: list[Sample] = []
    late = 0.0
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter() + 0.05

        async def one(i: int, req: Request) -> None:
            nonlocal late
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            late = max(late, time.perf_counter() - due)
            sample = await send(session, base, req, stream=False)
            sample.latency_ms = (time.perf_counter() - due) * 1000  # from the schedule
            samples.append(sample)

        await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
    return samples, late


def row(target: str, phase: str, rate: float, samples: list[Sample], baseline_ms: float) -> dict[str, Any]:
    """One table row: latency percentiles, ratios to the encode floor, outcomes and errors."""
    lat = summary([s.latency_ms for s in samples])
    outcomes: dict[str, int] = {}
    by_outcome: dict[str, list[float]] = {}
    for s in samples:
        key = f"http_{s.status}" if s.status != 200 else (s.cache or "-")
        outcomes[key] = outcomes.get(key, 0) + 1
        by_outcome.setdefault(key, []).append(s.latency_ms)
    p99s = {k: summary(v)["p99"] for k, v in sorted(by_outcome.items())}
    return {
        "target": target,
        "phase": phase,
        "rate": rate,
        "n": len(samples),
        "p50_ms": lat["p50"],
        "p99_ms": lat["p99"],
        "p99_x_floor": round(lat["p99"] / baseline_ms, 1) if baseline_ms else float("nan"),
        "p99_by_outcome": " ".join(f"{k}:{v:.0f}" for k, v in p99s.items()),
        "errors": sum(s.status != 200 for s in samples),
        "outcomes": " ".join(f"{k}:{v}" for k, v in sorted(outcomes.items())),
    }


def chat(prompt: str) -> Request:
    """A non-streaming chat request for ``prompt``."""
    return Request("POST", CHAT, chat_body("bench", prompt), HEADERS)


async def bypass_reasons(processor: Processor) -> dict[str, float]:
    """``semantic_cache_bypass_total`` by reason, and the store results, from /metrics."""
    return await processor.samples("semantic_cache_bypass_total", "semantic_cache_store_total")


def lone_encode_ms(encode: Any, texts: list[str]) -> float:
    """Median time of one query encoded alone: the floor every lookup pays."""
    encode(texts[:4])
    times = []
    for text in texts[:60]:
        started = time.perf_counter()
        encode([text])
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


def prioritise(pids: tuple[int, ...], nice: int) -> int:
    """Set the sender's and upstream's nice value; the value set (0 when not permitted)."""
    if nice == 0:
        return 0
    try:
        for pid in pids:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
    except PermissionError:
        print(
            "cannot raise the sender's priority (not root): latencies include its starvation", file=sys.stderr
        )
        return 0
    return nice


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Run every rate; return the result document."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-openloop-"))
    encode, _ = load_sentence_model("all-MiniLM-L6-v2")
    per_rate = [max(10, int(r * args.seconds)) for r in args.rates]
    # Misses: distinct questions (suffixed per rate, never repeated); hits: paraphrases of
    # stored questions, as many as the data has above the threshold (at most one per miss).
    texts = list(dict.fromkeys(t for p in read_pairs(args.data) for t in (p.a, p.b)))
    pairs = paraphrase_pairs(encode, sum(per_rate), 0.88, path=args.data, partial=True)
    floor = lone_encode_ms(encode, texts)
    del encode
    upstream, upstream_port = await start_upstream(tmp)
    outside = prioritise((os.getpid(), upstream.pid), args.outside_nice)
    processor = await start_processor(
        tmp,
        max_added_latency_ms=args.budget_ms,
        max_entries=1_000_000,
        embedding_workers=args.workers,
        embedding_threads=args.threads,
    )
    cached, plain = await start_envoys(tmp, processor.grpc_port, upstream_port)
    rows: list[dict[str, Any]] = []
    reasons: list[dict[str, Any]] = []
    try:
        hits_each = len(pairs) // len(args.rates)
        for i, (rate, n) in enumerate(zip(args.rates, per_rate, strict=True)):
            misses = [texts[(i * 7919 + k) % len(texts)] + f" (rate {rate}, #{k})" for k in range(n)]
            hit_pairs = pairs[i * hits_each : (i + 1) * hits_each]
            # Stored first (closed loop, not measured) so the paraphrases are semantic hits.
            async with aiohttp.ClientSession() as session:
                for p in hit_pairs:
                    await send(session, cached.url, chat(p.a), stream=False)
            await asyncio.sleep(0.5)
            before = await bypass_reasons(processor)
            phases = [
                ("envoy", "miss", plain, [chat(t) for t in misses]),
                ("cache", "miss", cached, [chat(t + " ") for t in misses]),
                ("cache", "semantic_hit", cached, [chat(p.b) for p in hit_pairs]),
            ]
            for target, phase, envoy, requests in phases:
                if not requests:
                    continue
                samples, late = await open_loop(envoy.url, requests, rate)
                late_ms = {"sender_late_ms": round(late * 1000, 1)}
                rows.append(row(target, phase, rate, samples, floor) | late_ms)
            after = await bypass_reasons(processor)
            delta = {k.split("{", 1)[-1].rstrip("}"): after[k] - before.get(k, 0.0) for k in after}
            reasons.append({"rate": rate} | {k: int(v) for k, v in sorted(delta.items()) if v})
            print(f"rate {rate}/s done", file=sys.stderr)
    finally:
        cached.stop()
        plain.stop()
        processor.child.stop()
        upstream.stop()
    added = []
    for rate in args.rates:
        env = next(r for r in rows if r["target"] == "envoy" and r["rate"] == rate)
        miss = next(r for r in rows if r["target"] == "cache" and r["phase"] == "miss" and r["rate"] == rate)
        added.append(
            {
                "rate": rate,
                "added_p50_ms": round(miss["p50_ms"] - env["p50_ms"], 2),
                "added_p99_ms": round(miss["p99_ms"] - env["p99_ms"], 2),
                "bound_ms": args.budget_ms + env["p99_ms"],
            }
        )
    shed_free = [r["rate"] for r in reasons if not any("overloaded" in k for k in r)]
    knee = max(shed_free) if shed_free else None
    return {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "encode_floor_ms": floor,
        "budget_ms": args.budget_ms,
        "outside_nice": outside,
        "knee_rate": knee,
        "rows": rows,
        "added": added,
        "processor_counters": reasons,
    }


def main() -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--rates", type=lambda s: [float(x) for x in s.split(",")], default=[25, 50, 100, 200, 400]
    )
    p.add_argument("--seconds", type=float, default=6.0, help="seconds of load per rate and phase")
    p.add_argument("--budget-ms", type=int, default=150, help="max_added_latency_ms of the processor")
    p.add_argument("--workers", type=int, default=0, help="embedding_workers (0 = one per core)")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="embedding_threads (0 = default; a value turns the solo pass off)",
    )
    p.add_argument(
        "--outside-nice", type=int, default=0, help="nice of the sender and upstream (0 = unchanged)"
    )
    p.add_argument("--data", type=Path, default=DATASET)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if any(r <= 0 or math.isnan(r) for r in args.rates):
        p.error("--rates must be positive")
    exit_on_sigterm()
    doc = asyncio.run(main_async(args))
    path = save("openloop", doc, args.out)
    print(f"encode floor {doc['encode_floor_ms']} ms; knee (no lookup shed) at {doc['knee_rate']}/s")
    print(table(doc["rows"]))
    print(table(doc["added"]))
    counters = doc["processor_counters"]
    columns = list(dict.fromkeys(k for r in counters for k in r))
    print(table(counters, columns))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
