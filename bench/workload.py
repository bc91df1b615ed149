"""Prompts for the benchmarks: QQP question pairs (``../shared/data/qqp-dev.jsonl``).

A *paraphrase pair* is a QQP duplicate pair (label 1) whose embeddings are at least a margin
above the cache threshold, so the second question is a semantic hit once the first is stored.
The first questions of the pairs chosen are also kept apart from each other (below the
threshold), so storing one never turns another into a hit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .report import DATASET

EncodeFn = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Pair:
    """Two questions from QQP and whether annotators called them duplicates."""

    a: str
    b: str
    label: int


def read_pairs(path: Path = DATASET, limit: int | None = None) -> Iterator[Pair]:
    """Pairs from a QQP JSON-lines file, in file order."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the benchmarks read QQP pairs from ../shared/data/qqp-dev.jsonl "
            "(relative to the repository root); pass --data FILE"
        )
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f):
            if limit is not None and n >= limit:
                return
            row = json.loads(line)
            a, b = str(row["a"]).strip(), str(row["b"]).strip()
            if a and b and a.lower() != b.lower():
                yield Pair(a, b, int(row["label"]))


def encode_all(encode: EncodeFn, texts: Sequence[str], batch: int = 64) -> np.ndarray:
    """Embeddings of ``texts`` in batches."""
    out = [encode(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    return np.concatenate(out) if out else np.empty((0, 0), dtype=np.float32)


def paraphrase_pairs(
    encode: EncodeFn,
    count: int,
    threshold: float,
    margin: float = 0.03,
    path: Path = DATASET,
    partial: bool = False,
) -> list[Pair]:
    """``count`` duplicate pairs with cosine ≥ threshold + margin, first questions mutually apart
    (with ``partial``, as many as the file has, up to ``count``)."""
    chosen: list[Pair] = []
    kept = np.empty((0, 0), dtype=np.float32)
    candidates = [p for p in read_pairs(path) if p.label == 1]
    step = max(64, 2 * count)
    for start in range(0, len(candidates), step):
        chunk = candidates[start : start + step]
        va = encode_all(encode, [p.a for p in chunk])
        vb = encode_all(encode, [p.b for p in chunk])
        for pair, a, b in zip(chunk, va, vb, strict=True):
            if float(a @ b) < threshold + margin:
                continue
            if kept.size and float((kept @ a).max()) >= threshold - margin:
                continue
            kept = a[None, :] if not kept.size else np.vstack([kept, a[None, :]])
            chosen.append(pair)
            if len(chosen) == count:
                return chosen
    if partial:
        return chosen
    raise ValueError(f"only {len(chosen)} paraphrase pairs above {threshold + margin:.2f} in {path}")


def chat_body(model: str, prompt: str, stream: bool = False) -> bytes:
    """A chat completion request body."""
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 64,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()
