"""``semantic-cache eval --show-errors``: every wrong hit and every guard rejection, with its pair."""

from __future__ import annotations

import json

from extproc.cli.evaluate import Outcome, Report


def _q(text: str) -> str:
    """A question as one JSON string (quotes and newlines visible)."""
    return json.dumps(text, ensure_ascii=False)


def wrong_hits(report: Report) -> list[str]:
    """One block per wrong hit at the report's threshold: what was asked, served, and expected."""
    lines: list[str] = []
    for o in report.outcomes:
        if o.served is None or o.similarity < report.threshold:
            continue
        own = o.served == o.a_prompt
        if own and o.pair.label == 1:
            continue  # a correct hit
        kind = "look-alike" if own else "other entry"
        lines.append(f"WRONG HIT ({kind}) similarity {o.similarity:.4f}, label {o.pair.label}")
        lines.append(f"  asked  b: {_q(o.pair.b)}")
        lines.append(f"  served a: {_q(o.served)}")
        if not own:
            lines.append(f"  pair's a: {_q(o.pair.a)}")
    return lines


def rejections(outcomes: list[Outcome]) -> list[str]:
    """One block per lookup where a guard turned a candidate down: the guards, the pair, the candidate."""
    lines: list[str] = []
    for o in outcomes:
        if not o.rejected_by:
            continue
        verdict = "right" if o.pair.label == 0 or o.rejected_prompt != o.a_prompt else "WRONG"
        lines.append(
            f"REJECTED by {', '.join(o.rejected_by)} similarity {o.rejected_similarity:.4f}, "
            f"label {o.pair.label} ({verdict} to reject)"
        )
        lines.append(f"  asked     b: {_q(o.pair.b)}")
        lines.append(f"  candidate a: {_q(o.rejected_prompt)}")
        if o.rejected_prompt != o.a_prompt:
            lines.append(f"  pair's    a: {_q(o.pair.a)}")
    return lines


def format_errors(report: Report) -> str:
    """Both lists, each under a heading that says how many there are."""
    wrong = wrong_hits(report)
    rejected = rejections(report.outcomes)
    out = [f"wrong hits at threshold {report.threshold:.2f}: {sum(1 for x in wrong if x[0] != ' ')}"]
    out += wrong
    out.append(f"guard rejections: {sum(1 for x in rejected if x[0] != ' ')}")
    out += rejected
    return "\n".join(out)
