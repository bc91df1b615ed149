"""How many ordinary questions the volatile-prompt detector refuses: QQP's distinct questions.

    python -m bench.volatile_rate [--data FILE] [--show N]

Prints the number of distinct questions, how many are flagged (by reason) and the rate, then
up to ``--show`` flagged questions so a reader can judge which were right to flag.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from extproc.cache.volatile import volatile_prompt

from .report import DATASET
from .workload import read_pairs


def main() -> None:
    """Run the measurement and print it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATASET)
    parser.add_argument("--show", type=int, default=40)
    args = parser.parse_args()
    questions = sorted({q for p in read_pairs(args.data) for q in (p.a, p.b)})
    flagged = [(q, reason) for q in questions if (reason := volatile_prompt(q))]
    by_reason = Counter(reason for _, reason in flagged)
    rate = len(flagged) / max(1, len(questions))
    print(f"questions={len(questions)} flagged={len(flagged)} rate={rate:.2%} by_reason={dict(by_reason)}")
    for q, reason in flagged[: args.show]:
        print(f"  [{reason}] {q}")


if __name__ == "__main__":
    main()
