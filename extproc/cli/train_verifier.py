"""``semantic-cache train-verifier``: fit the learned verifier on labelled pairs.

Reproducible end to end: the pairs are split by connected component (no question on two sides)
into train / calibrate / test by a hash; a logistic model is fitted on the train part (Newton's
method, L2, numpy only) over the text features and the two prompts' embeddings (u*v, |u-v|),
the embeddings' penalty is the one of :data:`EMBEDDING_L2` that ranks the calibrate part best,
an isotonic map from its score to a probability is fitted on the calibrate part, and the test
part is only measured (reliability table, expected calibration error).  Only pairs whose cosine
reaches ``min_similarity`` (the candidate prefilter) are used: those are the only pairs the
verifier ever scores.
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

from extproc.cache.guards.features import FEATURES, features_matrix, model_rows, text_part
from extproc.cache.guards.learned import VerifierModel
from extproc.cache.guards.provenance import feature_code
from extproc.cli.clusters import split_by_component
from extproc.cli.eval_report import Pair, roc_auc
from extproc.embedding.base import EncodeFn, WordVectors
from extproc.errors import ConfigError

log = logging.getLogger(__name__)

SHARES = (0.6, 0.2, 0.2)
"""train / calibrate / test."""
PART_NAMES = ("train", "calibrate", "test")
EXTRA_WEIGHT = 10.0
"""How many pairs of the main file each ``--extra-pairs`` pair counts for in training: hand-written
look-alikes and paraphrases are few (hundreds against tens of thousands) but say what the main
file rarely does (one word turned into its opposite, the same question reworded)."""
L2 = 1.0
"""Ridge penalty on the standardised text-feature weights (about one pseudo-pair of evidence each)."""
EMBEDDING_L2 = (1000.0, 3000.0, 10000.0)
"""Candidate penalties on the 2 x dim embedding weights: hundreds of weakly informative, correlated
inputs need far more shrinkage than the 21 text features; the calibrate part picks one."""


def _cached(path: Path, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()``, kept in ``path`` (an .npy file, read without pickle) for the next run."""
    if path.exists():
        log.info("reusing %s", path)
        return np.load(path, allow_pickle=False)
    value = compute()
    np.save(path, value, allow_pickle=False)
    return value


def embeddings(
    pairs: Sequence[Pair], model: tuple[EncodeFn, int], cache_dir: Path | None, model_key: str = ""
) -> tuple[dict[str, int], np.ndarray, str]:
    """(row of each distinct text, their embeddings, a digest of the texts): every text is
    encoded once, in a fixed order (by length, then text), and kept on disk keyed by the texts
    and ``model_key`` (the model that encodes them: another model's vectors are never reused),
    so a rerun encodes nothing."""
    encode, dim = model
    texts = sorted({t for p in pairs for t in (p.a, p.b)}, key=lambda t: (len(t), t))
    keyed = f"{model_key}|{dim}\x01" if model_key else ""
    digest = hashlib.sha256((keyed + "\x00".join(texts)).encode()).hexdigest()[:16]
    folder = cache_dir or Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def embed() -> np.ndarray:
        out = []
        for i in range(0, len(texts), 256):
            out.append(encode(texts[i : i + 256]))
            if i % 10240 == 0:
                log.info("encoded %d / %d texts (%.0fs)", i, len(texts), time.perf_counter() - started)
        return np.concatenate(out).astype(np.float32)

    vectors = _cached(folder / f"semantic-cache-embeddings-{digest}.npy", embed)
    return {t: i for i, t in enumerate(texts)}, vectors, digest


def pair_features(
    pairs: Sequence[Pair],
    model: tuple[EncodeFn, int],
    min_similarity: float,
    cache_dir: Path | None,
    model_key: str = "",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Text-feature rows of ``pairs`` whose cosine reaches ``min_similarity`` (NaN rows for the
    others), and each pair's query (``b``) and candidate (``a``) embedding; the rows are kept on
    disk too."""
    encode, _ = model
    index, vectors, digest = embeddings(pairs, model, cache_dir, model_key)
    folder = cache_dir or Path(tempfile.gettempdir())
    started = time.perf_counter()
    query_vectors = vectors[[index[p.b] for p in pairs]]
    candidate_vectors = vectors[[index[p.a] for p in pairs]]
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

    key = hashlib.sha256(f"{digest}|{min_similarity}|{feature_code()}".encode()).hexdigest()[:16]
    text_rows = _cached(folder / f"semantic-cache-features-{key}.npy", rows)
    return text_rows, query_vectors, candidate_vectors


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    l2: float | np.ndarray = L2,
    steps: int = 50,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """(mean, scale, weights, bias) of an L2 logistic regression on standardised features
    (``l2``: one penalty for every weight, or one per column; ``sample_weight``: how many pairs
    each row counts for, 1 by default)."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    sw = np.ones(len(x)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    w = np.zeros(z.shape[1])
    penalty = np.zeros(z.shape[1])
    penalty[:-1] = l2  # the bias is not shrunk
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -40, 40)))
        grad = z.T @ (sw * (p - y)) + penalty * w
        hess = (z * (sw * p * (1 - p))[:, None]).T @ z + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.max(np.abs(step))) < 1e-10:
            break
    return mean, scale, w[:-1], np.asarray(w[-1])


def fit_isotonic(score: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred isotonic regression: pool-adjacent-violators gives the non-decreasing step map
    score -> P(y=1); its breakpoints are each block's mean score at the block's rate (plus the
    lowest and highest score), linear in between.  Steps would make ``min_confidence`` jump
    over hundreds of pairs at once (0.78 to 0.85 one plateau); the centred map rises strictly, so
    every setting is a distinct cut, and it stays as calibrated."""
    order = np.argsort(score, kind="stable")
    s, t = score[order].astype(np.float64), y[order].astype(np.float64)
    blocks: list[list[float]] = []  # [sum of y, count, sum of scores]
    for si, ti in zip(s, t, strict=True):
        blocks.append([ti, 1.0, si])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            total, count, scores = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
            blocks[-1][2] += scores
    xs = [float(scores / count) for _, count, scores in blocks]
    ys = [float(total / count) for total, count, _ in blocks]
    if len(xs) == 1:
        return np.array([0.0, 1.0]), np.array([ys[0], ys[0]])
    if s[0] < xs[0]:
        xs.insert(0, float(s[0]))
        ys.insert(0, ys[0])
    if s[-1] > xs[-1]:
        xs.append(float(s[-1]))
        ys.append(ys[-1])
    for i in range(1, len(xs)):  # block means are increasing; keep them strictly so in floats
        if xs[i] <= xs[i - 1]:
            xs[i] = float(np.nextafter(xs[i - 1], 2.0))
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
    embedding_model: str = "",
    with_embeddings: bool = True,
    extra: Sequence[Pair] = (),
    extra_weight: float = EXTRA_WEIGHT,
    model_key: str = "",
) -> tuple[VerifierModel, dict[str, Any]]:
    """Fit and calibrate a verifier on ``pairs``; also return the held-out report.
    ``with_embeddings`` False: the text features only (a version-1-like model). ``extra``:
    labelled pairs added to the train part only, each counting ``extra_weight`` times (never
    calibrated or measured on: the confidence keeps meaning a rate on ``pairs``' distribution).
    ``model_key`` names the embedding model's weights in the on-disk caches."""
    features = pair_features(pairs, model, min_similarity, cache_dir, model_key)
    text_rows, query_vectors, candidate_vectors = features
    labels = np.array([p.label for p in pairs], dtype=np.float64)
    parts = split_by_component(pairs, SHARES)
    if split_dir is not None:
        split_dir.mkdir(parents=True, exist_ok=True)
        for name, idx in zip(PART_NAMES, parts, strict=True):
            with (split_dir / f"{name}.jsonl").open("w", encoding="utf-8") as out:
                for i in idx:
                    out.write(json.dumps({"a": pairs[i].a, "b": pairs[i].b, "label": pairs[i].label}) + "\n")
    cosine = text_rows[:, FEATURES.index("cosine")]
    kept = [np.array([i for i in idx if not np.isnan(cosine[i])], dtype=int) for idx in parts]
    for name, idx in zip(PART_NAMES, kept, strict=True):
        if len(set(labels[idx].tolist())) < 2:
            raise ConfigError(
                f"the {name} part has {len(idx)} pairs at cosine {min_similarity} or more, not both "
                "paraphrases and look-alikes: give more labelled pairs, or a lower --min-similarity"
            )
    train_i, calib_i, test_i = kept
    dim = query_vectors.shape[1] if with_embeddings else 0

    def rows(idx: np.ndarray) -> np.ndarray:
        if not dim:
            return text_rows[idx]
        return model_rows(text_rows[idx], query_vectors[idx], candidate_vectors[idx])

    x_train, x_calib, x_test = rows(train_i), rows(calib_i), rows(test_i)
    y_train, weight = labels[train_i], np.ones(len(train_i))
    extra_used = 0
    if extra:
        extra_rows, extra_q, extra_c = pair_features(extra, model, min_similarity, cache_dir, model_key)
        keep = np.flatnonzero(~np.isnan(extra_rows[:, 0]))
        x_extra = model_rows(extra_rows[keep], extra_q[keep], extra_c[keep]) if dim else extra_rows[keep]
        x_train = np.vstack([x_train, x_extra])
        y_train = np.concatenate([y_train, [float(extra[i].label) for i in keep]])
        weight = np.concatenate([weight, np.full(len(keep), extra_weight)])
        extra_used = len(keep)
    choices = EMBEDDING_L2 if dim else (L2,)
    best: tuple[float, float, VerifierModel] | None = None
    for l2_embedding in choices:
        penalty = np.full(x_train.shape[1], l2_embedding)
        penalty[: len(FEATURES)] = L2
        mean, scale, weights, bias = fit_logistic(x_train, y_train, penalty, sample_weight=weight)
        unit = np.array([0.0, 1.0])
        fitted = VerifierModel(mean, scale, weights, float(bias), unit, unit, embedding_dim=dim)
        auc = roc_auc(fitted.raw(x_calib), labels[calib_i])
        log.info("embedding penalty %g: calibrate ROC-AUC %.4f", l2_embedding, auc)
        if best is None or auc > best[0]:
            best = (auc, l2_embedding, fitted)
    assert best is not None
    calib_auc, chosen, fitted = best
    cx, cy = fit_isotonic(fitted.raw(x_calib), labels[calib_i])
    p_test = np.interp(fitted.raw(x_test), cx, cy)
    table, ece = reliability(p_test, labels[test_i])
    report = {
        "pairs": source or f"{len(pairs)} pairs",
        "min_similarity": min_similarity,
        "split": "by connected component, sha256 of the component: 60 % train, 20 % calibrate, 20 % test",
        "model": "logistic, L2 on standardised features"
        + (f": {L2:g} on the text features, {chosen:g} on the embeddings" if dim else f" {L2:g}"),
        "train_pairs": len(train_i),
        **({"extra_pairs": extra_used, "extra_weight": extra_weight} if extra else {}),
        "calibrate_pairs": len(calib_i),
        "test_pairs": len(test_i),
        "calibrate_auc": round(calib_auc, 4),
        "test_auc": round(roc_auc(p_test, labels[test_i]), 4),
        "test_cosine_auc": round(roc_auc(cosine[test_i], labels[test_i]), 4),
        "test_ece": round(ece, 4),
        "test_reliability": table,
        "text_features_code": feature_code(),
    }
    model_out = VerifierModel(
        fitted.mean,
        fitted.scale,
        fitted.weights,
        fitted.bias,
        cx,
        cy,
        info=report,
        embedding_dim=dim,
        embedding_model=embedding_model if dim else "",
    )
    return model_out, report
