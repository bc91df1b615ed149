"""End to end through Envoy: ``python -m bench.e2e`` (or ``make bench``).

Three targets in front of the same test upstream, driven with the same requests in one run:
``direct`` (the upstream itself), ``envoy`` (Envoy without the processor) and ``cache`` (Envoy
with the processor, memory backend).  For each upstream latency and concurrency it measures
misses, exact and semantic hits, streaming misses (time to first byte, gaps between chunks) and
bypasses (non-chat requests), repeats the lot, and reports medians over the repeats plus the
cost the processor adds over Envoy alone.  The model's single-query encode time is measured in
the same run: it is the floor of a semantic lookup.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from extproc.embedding.loader import load_sentence_model

from . import load
from .load import Request
from .report import DATASET, exit_on_sigterm, machine, median, save, summary, table
from .stack import Processor, start_envoys, start_processor, start_upstream
from .targets import check_targets
from .tracing import tracing_cost
from .workload import chat_body, paraphrase_pairs

CHAT = "/v1/chat/completions"
TARGETS = ("direct", "envoy", "cache")
JSON_HEADERS = (("content-type", "application/json"),)


def encode_floor(
    encode: Any, texts: list[str], n: int = 200, gap_s: float = 0.003, slow_gap_s: float = 0.0
) -> dict[str, float]:
    """Median single-query encode time (ms): a lone query after ``gap_s`` idle, as a request
    meets the model, and back to back; and the per-query time in batches of 32."""
    encode(texts[:8])
    cycle = (texts * (n // max(1, len(texts)) + 1))[:n]

    def single(gap: float) -> float:
        times = []
        for text in cycle:
            if gap:
                time.sleep(gap)
            started = time.perf_counter()
            encode([text])
            times.append((time.perf_counter() - started) * 1000)
        return round(statistics.median(times), 3)

    batched = []
    for i in range(0, max(32, min(len(texts), 320)) - 31, 32):
        chunk = (texts * 32)[i : i + 32]
        started = time.perf_counter()
        encode(chunk)
        batched.append((time.perf_counter() - started) * 1000 / len(chunk))
    out = {
        "single_ms": single(gap_s),
        "single_back_to_back_ms": single(0.0),
        "batch32_ms_per_query": round(median(batched), 3),
    }
    if slow_gap_s:  # as a lone request meets the model when the upstream takes that long
        cycle = cycle[: max(5, n // 10)]
        out[f"single_after_{int(slow_gap_s * 1000)}ms_idle_ms"] = single(slow_gap_s)
    return out


def count_for(args: argparse.Namespace, concurrency: int, latency_ms: int) -> int:
    """Requests per phase: enough for stable percentiles, fewer when the upstream is slow."""
    base = {1: 120, 8: 320, 32: 960}.get(concurrency, 40 * concurrency)
    if latency_ms:
        base = max(concurrency * 3, base // 6)
    return max(concurrency, int(base * args.scale))


def row_of(result: load.Result, **key: Any) -> dict[str, Any]:
    """One table row: the key, latency percentiles, throughput, outcomes, stream timings."""
    lat = result.latency()
    ttft = summary([s.ttft_ms for s in result.samples if s.ttft_ms == s.ttft_ms])
    gaps = summary([g for s in result.samples for g in s.gaps_ms])
    return key | {
        "p50_ms": lat["p50"],
        "p90_ms": lat["p90"],
        "p99_ms": lat["p99"],
        "rps": round(result.throughput, 1),
        "n": lat["n"],
        "ttft_p50_ms": ttft["p50"],
        "gap_p50_ms": gaps["p50"],
        "outcomes": result.outcomes(),
    }


MEASURED = (
    "p99_ms",
    "rps",
    "ttft_p50_ms",
    "gap_p50_ms",
    "lookup_mean_ms",
    "embed_mean_ms",
    "processor_cpu_ms",
    "machine_cpu_ms",
)
"""Columns of a phase's row beyond p50/p90, medians over repeats (the table prints them after ``cols``)."""


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds used so far by process ``pid`` (all its threads), or by the whole machine."""
    tick = os.sysconf("SC_CLK_TCK")
    if pid is None:  # every core, every process: user + nice + system + irq + softirq + steal
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        return sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7)) / tick
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(stat[11]) + int(stat[12])) / tick  # utime + stime


def cpu_profile(start: tuple[float, float], end: tuple[float, float], requests: int) -> dict[str, float]:
    """CPU milliseconds per request, of the processor and of the whole machine, over one phase."""
    n = max(requests, 1)
    return {
        "processor_cpu_ms": round(1000 * (end[0] - start[0]) / n, 3),
        "machine_cpu_ms": round(1000 * (end[1] - start[1]) / n, 3),
    }


def in_situ(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean lookup and embed time (ms) the processor itself measured between two scrapes."""
    out = {}
    for name, metric in (("lookup_mean_ms", "lookup"), ("embed_mean_ms", "embed")):
        total = after.get(f"semantic_cache_{metric}_seconds_sum", 0) - before.get(
            f"semantic_cache_{metric}_seconds_sum", 0
        )
        count = after.get(f"semantic_cache_{metric}_seconds_count", 0) - before.get(
            f"semantic_cache_{metric}_seconds_count", 0
        )
        out[name] = round(1000 * total / count, 3) if count else float("nan")
    return out


async def run_level(
    args: argparse.Namespace,
    bases: dict[str, str],
    processor: Processor,
    prompts: list[tuple[str, str]],
    latency: int,
    c: int,
) -> list[dict[str, Any]]:
    """Every phase of one (latency, concurrency) level, targets back to back."""
    n = count_for(args, c, latency)
    headers = JSON_HEADERS + ((("x-test-mode", "slow"), ("x-test-delay-ms", str(latency))) if latency else ())
    firsts = [a for a, _ in prompts[:n]]
    seconds = [b for _, b in prompts[:n]]
    warm_prompts = [a for a, _ in prompts[n : n + c]] or firsts[:c]

    def chats(model: str, texts: list[str], stream: bool = False) -> list[Request]:
        return [Request("POST", CHAT, chat_body(model, t, stream), headers) for t in texts]

    rows: list[dict[str, Any]] = []

    async def phase(
        name: str, target: str, reqs: list[Request], warm: list[Request], stream: bool = False
    ) -> None:
        before = await processor.metrics() if target == "cache" else {}
        pid = processor.child.pid
        cpu = (cpu_seconds(pid), cpu_seconds())  # includes the warm-up requests, counted below
        result = await load.run(bases[target], reqs, c, stream=stream, warmup=warm)
        row = row_of(result, phase=name, latency_ms=latency, concurrency=c, target=target)
        row |= cpu_profile(cpu, (cpu_seconds(pid), cpu_seconds()), len(reqs) + len(warm))
        if target == "cache":
            row |= in_situ(before, await processor.metrics())
        rows.append(row)

    for target in TARGETS:
        model, stream_model = f"bench-{uuid.uuid4().hex[:8]}", f"bench-{uuid.uuid4().hex[:8]}"
        await phase("miss", target, chats(model, firsts), chats(f"warm-{uuid.uuid4().hex[:8]}", warm_prompts))
        if target == "cache" and latency == 0:
            await asyncio.sleep(0.3)  # stores run after each response
            await phase("exact_hit", target, chats(model, firsts), chats(model, firsts[:c]))
            await phase("semantic_hit", target, chats(model, seconds), chats(model, seconds[:c]))
        warm = chats(f"w{stream_model}", warm_prompts, True)
        await phase("stream_miss", target, chats(stream_model, firsts, True), warm, stream=True)
        if latency == 0:
            bypass = [Request("GET", "/v1/models")] * n
            await phase("bypass", target, bypass, bypass[:c])
    return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over repeats of every numeric column, per (latency, concurrency, target, phase)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["latency_ms"], r["concurrency"], r["phase"], r["target"]), []).append(r)
    out = []
    for (latency, c, phase, target), rs in sorted(groups.items(), key=lambda kv: kv[0]):
        agg: dict[str, Any] = {"latency_ms": latency, "concurrency": c, "phase": phase, "target": target}
        for col in ("p50_ms", "p90_ms", *MEASURED):
            agg[col] = round(median(r.get(col, float("nan")) for r in rs), 3)
        agg["runs"] = len(rs)
        outcomes: dict[str, int] = {}
        for r in rs:
            for k, v in r["outcomes"].items():
                outcomes[k] = outcomes.get(k, 0) + v
        agg["outcomes"] = " ".join(f"{k}:{v}" for k, v in sorted(outcomes.items()))
        out.append(agg)
    return out


def added_cost(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per repeat, what ``cache`` adds over ``envoy`` (and ``envoy`` over ``direct``); medians."""
    by: dict[tuple[Any, ...], dict[str, float]] = {}
    lookups: dict[tuple[Any, ...], float] = {}
    for r in rows:
        key = (r["repeat"], r["latency_ms"], r["concurrency"], r["phase"])
        for col in ("p50_ms", "ttft_p50_ms", "gap_p50_ms", "rps"):
            by.setdefault((*key, col), {})[r["target"]] = r[col]
        if r["target"] == "cache":
            lookups[key] = r.get("lookup_mean_ms", float("nan"))
    out: dict[tuple[Any, ...], dict[str, list[float]]] = {}
    for (repeat, latency, c, phase, col), t in by.items():
        if "envoy" not in t or "cache" not in t:
            continue
        d = out.setdefault((latency, c, phase), {})
        d.setdefault(f"{col}_added", []).append(t["cache"] - t["envoy"])
        if col == "ttft_p50_ms":  # the stream's own cost: what is added beyond the lookup itself
            lookup = lookups.get((repeat, latency, c, phase), float("nan"))
            d.setdefault("ttft_beyond_lookup", []).append(t["cache"] - t["envoy"] - lookup)
        d.setdefault(f"{col}_ratio", []).append(t["cache"] / t["envoy"] if t["envoy"] else float("nan"))
        if "direct" in t:
            d.setdefault(f"{col}_envoy_over_direct", []).append(t["envoy"] - t["direct"])
    rows_out = []
    for (latency, c, phase), d in sorted(out.items()):
        row: dict[str, Any] = {"latency_ms": latency, "concurrency": c, "phase": phase}
        for name in ("p50_ms_added", "p50_ms_ratio", "p50_ms_envoy_over_direct", "rps_ratio"):
            row[name] = round(median(d.get(name, [])), 3)
        if phase == "stream_miss":
            row["ttft_added_ms"] = round(median(d.get("ttft_p50_ms_added", [])), 3)
            row["ttft_beyond_lookup_ms"] = round(median(d.get("ttft_beyond_lookup", [])), 3)
            row["gap_added_ms"] = round(median(d.get("gap_p50_ms_added", [])), 3)
        rows_out.append(row)
    return rows_out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; return the result document."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    before = machine()
    encode, dim = load_sentence_model("all-MiniLM-L6-v2", backend=args.embedding_backend)
    needed = max(count_for(args, c, lat) + c for c in args.concurrency for lat in args.latency)
    pairs = paraphrase_pairs(encode, needed, args.threshold, path=args.data)
    prompts = [(p.a, p.b) for p in pairs]
    texts = [a for a, _ in prompts][:200]
    slow = max(args.latency) / 1000 if args.scale >= 0.5 else 0.0
    floor = encode_floor(encode, texts, n=200 if args.scale >= 0.5 else 20, slow_gap_s=slow)
    floor_torch = None
    if args.embedding_backend != "torch" and args.scale >= 0.5:
        torch_encode, _ = load_sentence_model("all-MiniLM-L6-v2", backend="torch")
        floor_torch = encode_floor(torch_encode, texts)
    trace = await tracing_cost(
        encode, dim, rounds=9 if args.scale >= 0.5 else 1, n=int(2000 * min(1, args.scale)) or 20
    )
    upstream, upstream_port = await start_upstream(tmp)
    processor = envoy = plain = None
    try:
        processor = await start_processor(
            tmp,
            backend_type="memory",
            similarity_threshold=args.threshold,
            max_entries=1_000_000,
            embedding_backend=args.embedding_backend,
            embedding_workers=args.workers,
            max_added_latency_ms=args.budget_ms,
        )
        rss_loaded = processor.child.rss_mb()
        envoy, plain = await start_envoys(tmp, processor.grpc_port, upstream_port)
        bases = {"direct": f"http://127.0.0.1:{upstream_port}", "envoy": plain.url, "cache": envoy.url}
        rows: list[dict[str, Any]] = []
        floors: list[float] = []
        for repeat in range(args.repeat):
            # The floor again, now, under the same background load as this repeat.
            floors.append(encode_floor(encode, texts[:60], n=60 if args.scale >= 0.5 else 10)["single_ms"])
            for latency in args.latency:
                for c in args.concurrency:
                    for row in await run_level(args, bases, processor, prompts, latency, c):
                        rows.append({"repeat": repeat} | row)
                    print(
                        f"  repeat {repeat + 1}/{args.repeat} latency {latency} ms concurrency {c}: done",
                        file=sys.stderr,
                    )
        metrics = await processor.metrics()
        entries = int(metrics.get("semantic_cache_entries", 0))
        rss_after = processor.child.rss_mb()
    finally:
        for proc in (envoy, plain):
            if proc is not None:
                proc.stop()
        if processor is not None:
            processor.child.stop()
        upstream.stop()
    doc: dict[str, Any] = {
        "benchmark": "e2e",
        "machine_before": before,
        "machine_after": machine(),
        "settings": {
            "embedding_backend": args.embedding_backend,
            "threshold": args.threshold,
            "repeats": args.repeat,
            "concurrency": args.concurrency,
            "latency_ms": args.latency,
            "scale": args.scale,
            "dataset": str(args.data),
        },
        "encode_floor": floor | {"per_repeat_single_ms": floors, "single_ms_median": median([*floors])},
        "encode_floor_torch": floor_torch,
        "tracing": trace,
        "processor": {
            "rss_loaded_mb": round(rss_loaded, 1),
            "rss_after_mb": round(rss_after, 1),
            "entries": entries,
            "vectors_mb": round(entries * dim * 4 / 2**20, 1),
        },
        "summary": aggregate(rows),
        "added": added_cost(rows),
        "runs": rows,
    }
    doc["targets"] = check_targets(doc)
    return doc


def print_report(doc: dict[str, Any]) -> None:
    """The tables on stdout."""
    print(f"\nencode floor ({doc['settings']['embedding_backend']}): {doc['encode_floor']}")
    print(f"encode floor (torch, for comparison): {doc['encode_floor_torch']}")
    print(f"processor: {doc['processor']}")
    print(f"tracing (in-process hit path, µs/request): {doc['tracing']}\n")
    cols = ["latency_ms", "concurrency", "phase", "target", "p50_ms", "p90_ms", "p99_ms", "rps"]
    print(
        table(
            doc["summary"],
            [*cols, *MEASURED[2:], "outcomes"],
        )
    )
    print("\nAdded by the processor (cache − envoy, medians over repeats):\n")
    print(table(doc["added"]))
    print("\nTargets:\n")
    print(table(doc["targets"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    p = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=ints, default=[1, 8, 32], help="comma list (default 1,8,32)")
    p.add_argument("--latency", type=ints, default=[0, 300], help="upstream ms, comma list (default 0,300)")
    p.add_argument("--repeat", type=int, default=3, help="runs of every level; medians are reported")
    p.add_argument("--scale", type=float, default=1.0, help="multiply request counts (0.02 for a smoke run)")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--embedding-backend", default="auto", choices=["auto", "onnx", "torch"])
    p.add_argument("--workers", type=int, default=0, help="embedding_workers (0 = one per core)")
    p.add_argument("--budget-ms", type=int, default=150, help="max_added_latency_ms (0 = never shed)")
    p.add_argument("--data", type=Path, default=DATASET, help="QQP pairs (JSON lines)")
    p.add_argument("--out", type=Path, help="result JSON (default bench/results/e2e.json)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run, print the tables, save the JSON."""
    args = parse_args(argv)
    exit_on_sigterm()
    doc = asyncio.run(main_async(args))
    print_report(doc)
    print(f"\nsaved {save('e2e', doc, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
