"""``semantic-cache train-verifier``: fit the learned verifier on labelled pairs.

Reproducible end to end: the pairs are split by connected component (no question on two sides)
into train / calibrate / test by a hash; a logistic model is fitted on the train part (Newton's
method, L2, numpy only), an isotonic map from its score to a probability on the calibrate part,
and the test part is only measured (reliability table, expected calibration error).  Only pairs
whose cosine reaches ``min_similarity`` (the candidate prefilter) are used: those are the only
pairs the verifier ever scores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from extproc.cache.guards.features import FEATURES, features_matrix, text_part
from extproc.cache.guards.learned import VerifierModel
from extproc.cli.clusters import split_by_component
from extproc.cli.eval_report import Pair, roc_auc
from extproc.embedding.base import EncodeFn, WordVectors

log = logging.getLogger(__name__)

SHARES = (0.6, 0.2, 0.2)
"""train / calibrate / test."""
PART_NAMES = ("train", "calibrate", "test")
L2 = 1.0
"""Ridge penalty on the standardised weights (about one pseudo-pair of evidence per weight)."""


def _cached(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, kept in ``path`` (an .npy file, read without pickle) for the next run."""
    if path.exists():
        log.info("reusing %s", path)
        return np.load(path, allow_pickle=False)
    value = compute()
    np.save(path, value, allow_pickle=False)
    return value


def pair_features(
    pairs: Sequence[Pair], model: tuple[EncodeFn, int], min_similarity: float, cache_dir: Path | None
) -> np.ndarray:
    """Feature rows of ``pairs`` whose cosine reaches ``min_similarity`` (NaN rows for the
    others): every distinct text is encoded once, and the embeddings and rows are kept on disk
    keyed by the pairs' content, so a rerun encodes nothing."""
    encode, _ = model
    texts = sorted({t for p in pairs for t in (p.a, p.b)}, key=lambda t: (len(t), t))
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    folder = cache_dir or Path(tempfile.gettempdir())
    started = time.perf_counter()

    def embed() -> np.ndarray:
        out = []
        for i in range(0, len(texts), 256):
            out.append(encode(texts[i : i + 256]))
            if i % 10240 == 0:
                log.info("encoded %d / %d texts (%.0fs)", i, len(texts), time.perf_counter() - started)
        return np.concatenate(out).astype(np.float32)

    vectors = _cached(folder / f"semantic-cache-embeddings-{digest}.npy", embed)
    index = {t: i for i, t in enumerate(texts)}
    cosines = np.array([float(vectors[index[p.a]] @ vectors[index[p.b]]) for p in pairs])
    keep = np.flatnonzero(cosines >= min_similarity)

    def rows() -> np.ndarray:
        parts = [text_part(pairs[i].b, pairs[i].a, float(cosines[i])) for i in keep]
        words: dict[str, WordVectors] = {}
        words_fn = getattr(encode, "words", None)
        if words_fn is not None:
            need = sorted(
                {t for part in parts if part.needs_words for t in (part.query, part.candidate)},
                key=lambda t: (len(t), t),
            )
            for i in range(0, len(need), 256):
                batch = need[i : i + 256]
                words.update(zip(batch, words_fn(batch), strict=True))
            log.info("word vectors of %d texts (%.0fs)", len(need), time.perf_counter() - started)
        out = np.full((len(pairs), len(FEATURES)), np.nan)
        out[keep] = features_matrix(parts, words)
        return out

    key = hashlib.sha256(f"{digest}|{min_similarity}|{','.join(FEATURES)}".encode()).hexdigest()[:16]
    return _cached(folder / f"semantic-cache-features-{key}.npy", rows)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = L2, steps: int = 50) -> tuple[np.ndarray, ...]:
    """(mean, scale, weights, bias) of an L2 logistic regression on standardised features."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0  # the bias is not shrunk
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -40, 40)))
        grad = z.T @ (p - y) + penalty * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return mean, scale, w[:-1], np.asarray(w[-1])


def fit_isotonic(score: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool-adjacent-violators: the non-decreasing map score -> P(y=1), as the breakpoints of a
    piecewise-linear function (each block's first and last score at the block's mean)."""
    order = np.argsort(score, kind="stable")
    s, t = score[order], y[order].astype(np.float64)
    blocks: list[list[float]] = []  # [sum of y, count, first score, last score]
    for si, ti in zip(s, t, strict=True):
        blocks.append([ti, 1.0, si, si])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            total, count, _, last = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
            blocks[-1][3] = last
    xs: list[float] = []
    ys: list[float] = []
    for total, count, first, last in blocks:
        for x in (first, last) if last > first else (first,):
            if xs and x <= xs[-1]:
                x = np.nextafter(xs[-1], 2.0)
            xs.append(float(x))
            ys.append(total / count)
    if len(xs) == 1:
        xs, ys = [0.0, 1.0], [ys[0], ys[0]]
    return np.asarray(xs), np.asarray(ys)


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[list[dict[str, Any]], float]:
    """Rows (bin, pairs, mean confidence, observed share of paraphrases) and the expected
    calibration error (the pair-weighted mean |confidence - observed|)."""
    rows, ece = [], 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    for k in range(bins):
        inside = (p >= edges[k]) & ((p < edges[k + 1]) if k < bins - 1 else (p <= 1.0))
        n = int(inside.sum())
        if not n:
            continue
        conf, seen = float(p[inside].mean()), float(y[inside].mean())
        ece += n / len(p) * abs(conf - seen)
        label = f"{edges[k]:.1f}-{edges[k + 1]:.1f}"
        rows.append({"bin": label, "pairs": n, "confidence": round(conf, 4), "observed": round(seen, 4)})
    return rows, ece


def train(
    pairs: Sequence[Pair],
    model: tuple[EncodeFn, int],
    min_similarity: float,
    cache_dir: Path | None = None,
    split_dir: Path | None = None,
    source: str = "",
) -> tuple[VerifierModel, dict[str, Any]]:
    """Fit and calibrate a verifier on ``pairs``; also return the held-out report."""
    rows = pair_features(pairs, model, min_similarity, cache_dir)
    labels = np.array([p.label for p in pairs], dtype=np.float64)
    parts = split_by_component(pairs, SHARES)
    if split_dir is not None:
        split_dir.mkdir(parents=True, exist_ok=True)
        for name, idx in zip(PART_NAMES, parts, strict=True):
            with (split_dir / f"{name}.jsonl").open("w", encoding="utf-8") as out:
                for i in idx:
                    out.write(json.dumps({"a": pairs[i].a, "b": pairs[i].b, "label": pairs[i].label}) + "\n")
    cosine = rows[:, FEATURES.index("cosine")]
    kept = [np.array([i for i in idx if not np.isnan(cosine[i])], dtype=int) for idx in parts]
    train_i, calib_i, test_i = kept
    mean, scale, weights, bias = fit_logistic(rows[train_i], labels[train_i])
    fitted = VerifierModel(mean, scale, weights, float(bias), np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    cx, cy = fit_isotonic(fitted.raw(rows[calib_i]), labels[calib_i])
    p_test = np.interp(fitted.raw(rows[test_i]), cx, cy)
    table, ece = reliability(p_test, labels[test_i])
    report = {
        "pairs": source or f"{len(pairs)} pairs",
        "min_similarity": min_similarity,
        "split": "by connected component, sha256 of the component: 60 % train, 20 % calibrate, 20 % test",
        "train_pairs": len(train_i),
        "calibrate_pairs": len(calib_i),
        "test_pairs": len(test_i),
        "test_auc": round(roc_auc(p_test, labels[test_i]), 4),
        "test_cosine_auc": round(roc_auc(cosine[test_i], labels[test_i]), 4),
        "test_ece": round(ece, 4),
        "test_reliability": table,
    }
    model_out = VerifierModel(mean, scale, weights, float(bias), cx, cy, info=report)
    return model_out, report
