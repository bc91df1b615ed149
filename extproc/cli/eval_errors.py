"""``semantic-cache eval --show-errors``: every wrong hit and every rejected candidate, with its pair."""

from __future__ import annotations

import json

from extproc.cli.clusters import Clusters
from extproc.cli.eval_report import Lookup, Report


def _q(text: str) -> str:
    """A question as one JSON string (quotes and newlines visible)."""
    return json.dumps(text, ensure_ascii=False)


def wrong_hits(report: Report) -> list[str]:
    """One block per hit at the run's settings that duplicate clusters do not judge correct:
    what was asked, served, and expected, with the verdict (wrong or unjudged)."""
    clusters = Clusters(lk.pair for lk in report.lookups)
    lines: list[str] = []
    for lk in report.lookups:
        chosen = lk.decide(report.threshold, report.min_confidence)
        if chosen is None:
            continue
        served, similarity, confidence = chosen
        own = served == lk.pair.a
        verdict = clusters.judge(lk.pair.b, served, own_negative=own and lk.pair.label == 0)
        if verdict == "correct":
            continue
        kind = "look-alike" if own else "other entry"
        conf = "" if confidence is None else f", confidence {confidence:.4f}"
        lines.append(
            f"{verdict.upper()} HIT ({kind}) similarity {similarity:.4f}{conf}, label {lk.pair.label}"
        )
        lines.append(f"  asked  b: {_q(lk.pair.b)}")
        lines.append(f"  served a: {_q(served)}")
        if not own:
            lines.append(f"  pair's a: {_q(lk.pair.a)}")
    return lines


def rejections(lookups: list[Lookup], threshold: float, min_confidence: float) -> list[str]:
    """One block per lookup whose best candidate was turned down: by a guard, or by the
    verifier's confidence below ``min_confidence`` (the pair, the candidate, the reason)."""
    lines: list[str] = []
    for lk in lookups:
        reason, similarity, prompt = _rejected(lk, threshold, min_confidence)
        if not reason:
            continue
        verdict = "right" if lk.pair.label == 0 or prompt != lk.pair.a else "WRONG"
        lines.append(
            f"REJECTED by {reason} similarity {similarity:.4f}, label {lk.pair.label} ({verdict} to reject)"
        )
        lines.append(f"  asked     b: {_q(lk.pair.b)}")
        lines.append(f"  candidate a: {_q(prompt)}")
        if prompt != lk.pair.a:
            lines.append(f"  pair's    a: {_q(lk.pair.a)}")
    return lines


def _rejected(lk: Lookup, threshold: float, min_confidence: float) -> tuple[str, float, str]:
    """The first turned-down candidate of a lookup that served nothing better before it."""
    if lk.rejected_by and lk.rejected_similarity >= threshold:
        first = lk.scored[0][1] if lk.scored else 0.0
        if lk.rejected_similarity >= first:
            return ", ".join(lk.rejected_by), lk.rejected_similarity, lk.rejected_prompt
    for served, similarity, confidence in lk.scored:
        if similarity < threshold:
            break
        if confidence is None or confidence >= min_confidence:
            return "", 0.0, ""  # served
        return f"confidence {confidence:.4f} < {min_confidence:.2f}", similarity, served
    return "", 0.0, ""


def format_errors(report: Report) -> str:
    """Both lists, each under a heading that says how many there are."""
    wrong = wrong_hits(report)
    rejected = rejections(report.lookups, report.threshold, report.min_confidence)
    out = [
        f"hits not judged correct at threshold {report.threshold:.2f}, min_confidence "
        f"{report.min_confidence:.2f}: {sum(1 for x in wrong if x[0] != ' ')}"
    ]
    out += wrong
    out.append(f"rejections: {sum(1 for x in rejected if x[0] != ' ')}")
    out += rejected
    return "\n".join(out)
