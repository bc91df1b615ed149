"""What ``semantic-cache eval`` reports: rows of counts per (threshold, min_confidence), the
cluster judging of every hit, the pairwise classifier view, and the text table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from extproc.cli.clusters import Clusters


@dataclass(frozen=True)
class Pair:
    """One labelled pair: ``a`` is stored, ``b`` is looked up; label 1 means same meaning."""

    a: str
    b: str
    label: int


@dataclass(frozen=True)
class Lookup:
    """One ``b`` looked up: its pair (prompts as the server normalizes them) and every candidate
    that passed the guards at the lowest threshold, best first: (served ``a``, similarity,
    confidence or None)."""

    pair: Pair
    scored: tuple[tuple[str, float, float | None], ...]
    rejected_by: tuple[str, ...] = ()
    """Guards that turned a candidate down (the first such candidate below)."""
    rejected_similarity: float = 0.0
    rejected_prompt: str = ""

    def decide(self, threshold: float, min_confidence: float) -> tuple[str, float, float | None] | None:
        """The candidate the cache serves at these settings (None: a miss)."""
        for candidate in self.scored:
            _, similarity, confidence = candidate
            if similarity >= threshold and (confidence is None or confidence >= min_confidence):
                return candidate
        return None


@dataclass
class Row:
    """Counts at one threshold and min_confidence."""

    threshold: float
    min_confidence: float = 0.0
    hits: int = 0
    correct: int = 0
    """Hits serving the pair's own ``a`` for a label-1 pair (the original, strict count)."""
    wrong: int = 0
    wrong_negative: int = 0
    """Hits on the pair's own ``a`` with label 0: a look-alike served as if it were a paraphrase."""
    wrong_other: int = 0
    """Hits on another pair's ``a`` (for label-1 pairs often a paraphrase the labels do not cover)."""
    wrong_repeat: int = 0
    """Of ``wrong_other``: the entry's prompt is the query itself up to case (a repeated question)."""
    negative_hits: int = 0
    """Label-0 pairs that got any hit."""
    precision: float = 0.0
    recall: float = 0.0
    hit_rate: float = 0.0
    negative_hit_rate: float = 0.0
    judged_correct: int = 0
    """Hits judged by duplicate clusters: the served text is the query or in its cluster ..."""
    judged_wrong: int = 0
    """... a label-0 pair joins the two clusters, or the hit is the pair's own label-0 ``a`` ..."""
    unjudged: int = 0
    """... or the labels say nothing about the two."""
    precision_judged: float = 0.0
    """judged_correct / (judged_correct + judged_wrong)."""
    recall_judged: float = 0.0
    """Label-1 pairs whose hit was judged correct, over all label-1 pairs."""


def judge_rows(
    lookups: Sequence[Lookup], levels: Sequence[tuple[float, float]], clusters: Clusters
) -> list[Row]:
    """One :class:`Row` per (threshold, min_confidence) in ``levels``."""
    positives = sum(lk.pair.label for lk in lookups)
    negatives = len(lookups) - positives
    rows = []
    for threshold, floor in levels:
        row = Row(threshold=threshold, min_confidence=floor)
        positive_correct = 0
        for lk in lookups:
            chosen = lk.decide(threshold, floor)
            if chosen is None:
                continue
            pair, served = lk.pair, chosen[0]
            row.hits += 1
            own = served == pair.a
            row.negative_hits += pair.label == 0
            verdict = clusters.judge(pair.b, served, own_negative=own and pair.label == 0)
            row.judged_correct += verdict == "correct"
            row.judged_wrong += verdict == "wrong"
            row.unjudged += verdict == "unjudged"
            positive_correct += verdict == "correct" and pair.label == 1
            if own and pair.label == 1:
                row.correct += 1
                continue
            row.wrong += 1
            if own:
                row.wrong_negative += 1
            else:
                row.wrong_other += 1
                row.wrong_repeat += served.casefold() == pair.b.casefold()
        judged = row.judged_correct + row.judged_wrong
        row.precision = row.correct / row.hits if row.hits else 0.0
        row.recall = row.correct / positives if positives else 0.0
        row.hit_rate = row.hits / len(lookups) if lookups else 0.0
        row.negative_hit_rate = row.negative_hits / negatives if negatives else 0.0
        row.precision_judged = row.judged_correct / judged if judged else 0.0
        row.recall_judged = positive_correct / positives if positives else 0.0
        rows.append(row)
    return rows


def pairwise(scores: np.ndarray, accepted: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Each ``b`` against its own ``a`` only, as a classifier: precision / recall / F1 of the
    cache's decision (``accepted``) and ROC-AUC of ``scores`` (ties counted half)."""
    tp = int(np.sum(accepted & (labels == 1)))
    fp = int(np.sum(accepted & (labels == 0)))
    fn = int(np.sum(~accepted & (labels == 1)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "roc_auc": round(roc_auc(scores, labels), 4),
    }


def roc_auc(score: np.ndarray, y: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic with average ranks for ties)."""
    pos = int(np.sum(y == 1))
    neg = len(y) - pos
    if not pos or not neg:
        return float("nan")
    order = np.argsort(score, kind="stable")
    sorted_scores = score[order]
    ranks = np.empty(len(score))
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(score)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e - 1) / 2 + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass
class Report:
    """The result of one evaluation run."""

    pairs: int
    positives: int
    negatives: int
    stored: int
    skipped: int
    guards: list[str]
    verifier: str
    threshold: float
    min_confidence: float
    rows: list[Row]
    rejections: dict[str, int]
    wall_seconds: float
    lookup_seconds: float
    queries_per_second: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    pairwise: dict[str, float] = field(default_factory=dict)
    """With ``--pairwise``: each ``b`` against its own ``a`` (see :func:`pairwise`)."""
    lookups: list[Lookup] = field(default_factory=list)
    """One per usable pair (not part of the JSON output; ``--outcomes`` writes them)."""

    def row(self, threshold: float, min_confidence: float | None = None) -> Row:
        """The row of ``threshold`` (at the run's min_confidence unless given)."""
        floor = self.min_confidence if min_confidence is None else min_confidence
        return next(
            r
            for r in self.rows
            if abs(r.threshold - threshold) < 1e-9 and abs(r.min_confidence - floor) < 1e-9
        )

    def outcomes(self) -> list[dict[str, Any]]:
        """One record per pair at the run's settings: a, b, label, served text (or None),
        similarity and confidence of what was served."""
        out = []
        for lk in self.lookups:
            chosen = lk.decide(self.threshold, self.min_confidence)
            out.append(
                {
                    "a": lk.pair.a,
                    "b": lk.pair.b,
                    "label": lk.pair.label,
                    "served": chosen[0] if chosen else None,
                    "similarity": chosen[1] if chosen else None,
                    "confidence": chosen[2] if chosen else None,
                }
            )
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: the headline numbers at the run's settings plus every row."""
        head = asdict(self.row(self.threshold))
        out = {k: v for k, v in asdict(self).items() if k not in ("rows", "lookups")}
        return {**out, **head, "rows": [asdict(r) for r in self.rows]}


def format_report(report: Report, sweep: bool) -> str:
    """Human-readable summary, and the tables over thresholds and confidences when ``sweep``."""
    r = report.row(report.threshold)
    lines = [
        f"pairs {report.pairs} (positives {report.positives}, negatives {report.negatives}, "
        f"skipped {report.skipped}); stored {report.stored} distinct a",
        f"guards: {', '.join(report.guards) or 'none (cosine only)'}; verifier: {report.verifier or 'none'}",
        f"threshold {report.threshold:.2f}, min_confidence {report.min_confidence:.2f}: hits {r.hits}, "
        f"correct {r.correct}, wrong {r.wrong} (look-alike {r.wrong_negative}, other entry "
        f"{r.wrong_other}, of which repeats {r.wrong_repeat})",
        "  (look-alike: a label-0 pair's own a served; other entry: another pair's a served; repeats: "
        "that entry is the question itself up to case, e.g. a question asked twice in the file)",
        f"precision {r.precision:.4f}  recall {r.recall:.4f}  hit rate {r.hit_rate:.4f}  "
        f"negative hit rate {r.negative_hit_rate:.4f}",
        f"judged by clusters: correct {r.judged_correct}, wrong {r.judged_wrong}, unjudged {r.unjudged}; "
        f"precision_judged {r.precision_judged:.4f}  recall_judged {r.recall_judged:.4f}",
        f"wall {report.wall_seconds:.1f}s, lookups {report.lookup_seconds:.1f}s, "
        f"{report.queries_per_second:.1f} queries/s, lookup latency p50 {report.latency_ms['p50']:.2f} ms "
        f"p99 {report.latency_ms['p99']:.2f} ms",
    ]
    if report.pairwise:
        p = report.pairwise
        lines.append(
            f"pairwise (each b against its own a): precision {p['precision']:.4f}  recall {p['recall']:.4f}  "
            f"F1 {p['f1']:.4f}  ROC-AUC {p['roc_auc']:.4f}"
        )
    if report.rejections:
        # Counted once per lookup at the lowest threshold evaluated (a sweep looks up once, there).
        lowest = min((r.threshold for r in report.rows), default=report.threshold)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(report.rejections.items()))
        lines.append(f"rejections (guard vetoes of candidates at similarity >= {lowest:.2f}): {counts}")
    if sweep:
        lines += [
            "",
            "| threshold | min_confidence | hits | correct | wrong | look-alike | other | precision "
            "| recall | judged correct | judged wrong | unjudged | precision_judged | recall_judged |",
            "|" + " ---: |" * 14,
        ]
        for row in report.rows:
            lines.append(
                f"| {row.threshold:.2f} | {row.min_confidence:.2f} | {row.hits} | {row.correct} "
                f"| {row.wrong} | {row.wrong_negative} | {row.wrong_other} | {row.precision:.4f} "
                f"| {row.recall:.4f} "
                f"| {row.judged_correct} | {row.judged_wrong} | {row.unjudged} "
                f"| {row.precision_judged:.4f} | {row.recall_judged:.4f} |"
            )
    return "\n".join(lines)
