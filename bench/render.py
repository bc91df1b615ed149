"""Markdown tables for bench/README.md from the latest results: ``python -m bench.render``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .report import RESULTS, table

E2E_COLUMNS = ["latency_ms", "concurrency", "phase", "target", "p50_ms", "p90_ms", "p99_ms", "rps"]


def _load(name: str, folder: Path) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def machine(doc: dict[str, Any]) -> str:
    """One paragraph: CPU, cores, memory, Python, load before and after."""
    before, after = doc["machine_before"], doc["machine_after"]
    return (
        f"{before['cpu']}, {before['cores']} cores, {before['memory_gb']} GB, Python {before['python']}, "
        f"{before['platform']}. Load average at start {before['load_average']}, at end "
        f"{after['load_average']}; busiest other processes at start: "
        f"{'; '.join(before['busy'][:3]) or 'none'}."
    )


def e2e(doc: dict[str, Any]) -> str:
    """The e2e tables."""
    floor, torch = doc["encode_floor"], doc.get("encode_floor_torch") or {}
    lines = [
        f"### End to end through Envoy (`python -m bench.e2e`, {doc['settings']['repeats']} repeats)",
        "",
        f"Encode floor ({doc['settings']['embedding_backend']} → ONNX Runtime): lone query "
        f"{floor['single_ms_median']} ms (per repeat {floor['per_repeat_single_ms']}), back to back "
        f"{floor['single_back_to_back_ms']} ms, batch of 32 {floor['batch32_ms_per_query']} ms/query. "
        f"Torch, same run: lone {torch.get('single_ms', '-')} ms, back to back "
        f"{torch.get('single_back_to_back_ms', '-')} ms, "
        f"batch of 32 {torch.get('batch32_ms_per_query', '-')} ms/query.",
        f"Processor RSS: {doc['processor']['rss_loaded_mb']} MB with the model loaded, "
        f"{doc['processor']['rss_after_mb']} MB after the run ({doc['processor']['entries']} entries, "
        f"{doc['processor']['vectors_mb']} MB of vectors).",
        f"Disabled tracing, in-process hit path (µs/request): {json.dumps(doc['tracing'])}.",
        "",
        table(doc["summary"], [*E2E_COLUMNS, "ttft_p50_ms", "gap_p50_ms", "lookup_mean_ms", "embed_mean_ms"]),
        "",
        "What the processor adds (cache − envoy per repeat, then the median; `ratio` = cache / envoy):",
        "",
        table(doc["added"]),
        "",
        table(doc["targets"]),
    ]
    return "\n".join(lines)


def backends(doc: dict[str, Any]) -> str:
    """The backend scaling tables."""
    from .backends import COLUMNS

    return "\n".join(
        [
            "### Backend lookup scaling (`python -m bench.backends`)",
            "",
            table(doc["rows"], COLUMNS),
            "",
            table(doc["targets"]),
        ]
    )


def gptcache(doc: dict[str, Any]) -> str:
    """The GPTCache comparison tables."""
    s = doc["settings"]
    return "\n".join(
        [
            f"### Side by side with GPTCache (`python -m bench.gptcache_compare`, {s['pairs']} QQP pairs, "
            f"threshold {s['threshold']} = GPTCache {s['gptcache_threshold']})",
            "",
            table(doc["rows"]),
            "",
            table(doc["targets"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Print the Markdown of every result found."""
    folder = Path(argv[0]) if argv else RESULTS
    parts = []
    for name, render in (("e2e", e2e), ("backends", backends), ("gptcache", gptcache)):
        doc = _load(name, folder)
        if doc is not None:
            parts += [f"Machine ({name}): {machine(doc)}", "", render(doc), ""]
    print("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
