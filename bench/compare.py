"""Precision at equal recall: a guarded ``eval --sweep --json`` run against a cosine-only one.

Usage: python bench/compare.py BASELINE.txt GUARDED.txt  (files whose last line is the JSON)
For each threshold of the guarded run, the baseline's precision at the same recall is read off
its curve by linear interpolation between neighbouring thresholds.  A second table does the same
for *judged* precision, correct / (correct + look-alike): only the hits the labels can judge (the
pair's own ``a`` served), leaving out hits of other pairs' entries, which the labels say nothing of.
"""

from __future__ import annotations

import json
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any


def last_json(path: str) -> dict[str, Any]:
    """The JSON object on the last line of an ``eval --json`` output file."""
    result: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8").strip().splitlines()[-1])
    return result


def judged(row: dict[str, Any]) -> float:
    """correct / (correct + look-alike hits)."""
    return float(row["correct"] / max(1, row["correct"] + row["wrong_negative"]))


def precision_at(rows: list[dict[str, Any]], recall: float, key: str = "precision") -> float | None:
    """The curve's precision at ``recall`` (None outside the recall range the curve covers)."""
    points = sorted((r["recall"], judged(r) if key == "judged" else r[key]) for r in rows)
    for (r0, p0), (r1, p1) in pairwise(points):
        if r0 <= recall <= r1:
            return p0 if r1 == r0 else p0 + (p1 - p0) * (recall - r0) / (r1 - r0)
    return None


def main(baseline_path: str, guarded_path: str) -> None:
    """Print the comparison as a markdown table."""
    baseline, guarded = last_json(baseline_path), last_json(guarded_path)
    best = max(baseline["rows"], key=lambda r: r["precision"])
    for key in ("precision", "judged"):
        print(f"\n| threshold | recall | {key} (guarded) | cosine only at the same recall | difference |")
        print("| ---: | ---: | ---: | ---: | ---: |")
        for row in guarded["rows"]:
            other = precision_at(baseline["rows"], row["recall"], key)
            if other is None:
                continue
            ours = judged(row) if key == "judged" else row[key]
            print(
                f"| {row['threshold']:.2f} | {row['recall']:.4f} | {ours:.4f} | {other:.4f} "
                f"| {ours - other:+.4f} |"
            )
    print(
        f"\nbest precision of cosine only: {best['precision']:.4f} at threshold {best['threshold']:.2f} "
        f"(recall {best['recall']:.4f})"
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
