"""Shared benchmark plumbing: percentiles, medians over runs, tables, JSON results, machine facts."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATASET = ROOT.parent / "shared" / "data" / "qqp-dev.jsonl"
"""The QQP dev pairs, ``../shared/data/qqp-dev.jsonl`` from the repository root."""
SAMPLE = ROOT / "bench" / "data" / "qqp-sample.jsonl"
"""The first 1,500 of those pairs, kept in the repository: what the smoke tests run on."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``finally`` blocks stop the processes a run started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    data = sorted(values)
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50 / p90 / p99 of a list of latencies in milliseconds."""
    return {f"p{q}": round(percentile(latencies_ms, q), 3) for q in (50, 90, 99)} | {"n": len(latencies_ms)}


def median(values: Iterable[float]) -> float:
    """Median of the finite values (NaN when there are none)."""
    data = [v for v in values if v == v]
    return statistics.median(data) if data else float("nan")


def load_average() -> tuple[float, float, float]:
    """The 1 / 5 / 15 minute load averages."""
    return os.getloadavg()


def busy_processes(limit: int = 5) -> list[str]:
    """The processes using the most CPU right now (to tell whether a run was noisy)."""
    try:
        out = subprocess.run(
            ["ps", "-eo", "pcpu,pid,comm", "--sort=-pcpu"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    mine = str(os.getpid())
    rows = [" ".join(line.split()) for line in out.splitlines()[1:]]
    return [r for r in rows if r.split()[1:2] != [mine]][:limit]  # not this benchmark itself


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in load_average()],
        "busy": busy_processes(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise), before reading RSS."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process (default: this one) in MiB."""
    path = Path(f"/proc/{pid or 'self'}/status")
    for line in path.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fmt(value: Any) -> str:
    """A table cell: floats with sensible precision, everything else as text."""
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (dicts) with ``columns`` (default: the first row's keys)."""
    if not rows:
        return "(no rows)"
    cols = list(columns or rows[0].keys())
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |" for row in cells]
    return "\n".join(lines)


def save(name: str, result: Mapping[str, Any], out: Path | None = None) -> Path:
    """Write ``result`` as JSON to ``out`` (default bench/results/NAME.json); return the path."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path


def verdict(ok: bool | None) -> str:
    """``met`` / ``MISSED`` / ``-`` for a target check."""
    return "-" if ok is None else ("met" if ok else "MISSED")
