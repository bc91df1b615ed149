"""The end-to-end targets of issue 7, checked against one e2e result document."""

from __future__ import annotations

from typing import Any

from .report import verdict


def _find(rows: list[dict[str, Any]], **key: Any) -> dict[str, Any] | None:
    for r in rows:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def _check(name: str, value: float | None, limit: float, higher_is_better: bool = False) -> dict[str, Any]:
    if value is None or value != value:
        return {"target": name, "measured": "-", "limit": round(limit, 2), "verdict": verdict(None)}
    ok = value >= limit if higher_is_better else value <= limit
    return {"target": name, "measured": round(value, 2), "limit": round(limit, 2), "verdict": verdict(ok)}


def check_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: what was measured, the limit, met or missed (medians over repeats)."""
    floor = doc["encode_floor"]["single_ms_median"]
    summary, added = doc["summary"], doc["added"]
    out = []

    def p50(phase: str, c: int = 1, target: str = "cache", latency: int = 0) -> float | None:
        r = _find(summary, phase=phase, concurrency=c, target=target, latency_ms=latency)
        return None if r is None else r["p50_ms"]

    def add(phase: str, col: str, c: int = 1, latency: int = 0) -> float | None:
        r = _find(added, phase=phase, concurrency=c, latency_ms=latency)
        return None if r is None else r.get(col)

    out.append(_check("semantic hit p50, c=1 (ms) ≤ encode + 3", p50("semantic_hit"), floor + 3))
    out.append(_check("exact hit p50, c=1 (ms) ≤ 3", p50("exact_hit"), 3.0))
    out.append(
        _check(
            "stream miss: TTFB added beyond the lookup, c=1 (ms) ≤ 1",
            add("stream_miss", "ttft_beyond_lookup_ms"),
            1.0,
        )
    )
    out.append(
        _check("stream miss: chunk gap added p50, c=1 (ms) ≤ 1", add("stream_miss", "gap_added_ms"), 1.0)
    )
    for latency in sorted({r["latency_ms"] for r in added}):
        out.append(
            _check(
                f"miss added p50, c=1, upstream {latency} ms (ms) ≤ encode + 3",
                add("miss", "p50_ms_added", latency=latency),
                floor + 3,
            )
        )
        idle = doc["encode_floor"].get(f"single_after_{latency}ms_idle_ms")
        if latency and idle:
            out.append(
                _check(
                    f"  … with the encode time of a lone query after {latency} ms idle",
                    add("miss", "p50_ms_added", latency=latency),
                    idle + 3,
                )
            )
    out.append(_check("bypass added p50, c=1 (ms) ≤ 1", add("bypass", "p50_ms_added"), 1.0))
    hits = _find(summary, phase="semantic_hit", concurrency=32, target="cache", latency_ms=0)
    out.append(_check("semantic hits/s at c=32 ≥ 250", None if hits is None else hits["rps"], 250, True))
    proc = doc["processor"]
    out.append(_check("processor RSS (MB) ≤ 800 + vectors", proc["rss_after_mb"], 800 + proc["vectors_mb"]))
    for kind in ("exact", "semantic"):
        hit_p50 = p50(f"{kind}_hit")
        cost = doc["tracing"][kind]["cost_us"] / 1000
        out.append(
            _check(
                f"disabled tracing cost, % of {kind}-hit p50 < 2",
                None if not hit_p50 else 100 * cost / hit_p50,
                2.0,
            )
        )
    return out
