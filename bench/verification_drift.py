"""The δ rule when the error moves under it: a synthetic stream whose error jumps part way through.

The Quora simulation (:mod:`bench.verification_sim`) has real questions but short histories; this
one has the long history a deployment builds and nothing but the rule (``Outcomes``, the
processor's own code). Each request brings a candidate of confidence c, drawn so that most are
confident; it is wrong with probability 1 − c (the calibration is right) until ``--change-at``,
after which a candidate at confidence ``--from`` or more is wrong ``--jump`` more often (a new
model version behind the same name answers those differently). The rule serves a candidate when its
bound is ≤ δ, shadow-verifies ``--sample-rate`` of what it serves and learns from every candidate
it explores, as the processor does. Printed per run: the served hits and how often they were wrong
before and after the change, and how many served hits it took after the change until the rule
stopped serving the changed candidates at that rate (the realized rate of the last window ≤ δ).

    python -m bench.verification_drift                 # detection on and off, δ 0.05 and 0.1
    python -m bench.verification_drift --jump 0.1 --length 100000
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from extproc.dataplane.verification import Outcomes

WINDOW = 2000
"""Requests per window of the printed timeline."""


@dataclass
class Run:
    """What one policy did over the stream."""

    name: str
    served: list[int] = field(default_factory=lambda: [0, 0])
    """Served hits before and after the change."""
    wrong: list[int] = field(default_factory=lambda: [0, 0])
    windows: list[tuple[int, int]] = field(default_factory=list)
    """(wrong, served) of each window of WINDOW requests."""
    changes: int = 0


def candidate(rng: random.Random) -> tuple[float, float]:
    """A candidate's (confidence, similarity): mostly confident, as the verifier's are."""
    confidence = 1.0 - min(0.5, rng.betavariate(1.0, 18.0))
    similarity = min(0.999, 0.8 + (confidence - 0.5) * 0.35 + rng.uniform(-0.03, 0.03))
    return confidence, similarity


def simulate(args: argparse.Namespace, delta: float, detect: bool) -> Run:
    """Drive the rule over one stream (the same stream for every policy: the same seed)."""
    rng = random.Random(args.seed)
    outcomes = Outcomes(detect_changes=detect)
    run = Run(f"δ {delta:g}, change detection {'on' if detect else 'off'}")
    change_at = int(args.change_at * args.length)
    window = [0, 0]
    for i in range(args.length):
        if i and i % WINDOW == 0:
            run.windows.append((window[0], window[1]))
            window = [0, 0]
        confidence, similarity = candidate(rng)
        after = i >= change_at
        p_wrong = 1.0 - confidence
        if after and confidence >= args.from_confidence:
            p_wrong += args.jump * confidence
        wrong = rng.random() < p_wrong
        entry = f"e{i}"
        if outcomes.upper("m", confidence, entry, similarity) > delta:
            # Explored: the request goes upstream and its answer is compared with the candidate's.
            outcomes.learn("m", entry, confidence, wrong, similarity)
            continue
        run.served[after] += 1
        run.wrong[after] += wrong
        window[0] += wrong
        window[1] += 1
        if rng.random() < args.sample_rate:
            outcomes.learn("m", entry, confidence, wrong, similarity)
    run.windows.append((window[0], window[1]))
    run.changes = outcomes.changes
    return run


def describe(run: Run, args: argparse.Namespace, delta: float) -> str:
    """The run's line and its timeline."""
    before = run.wrong[0] / max(1, run.served[0])
    after = run.wrong[1] / max(1, run.served[1])
    first_after = int(args.change_at * args.length) // WINDOW
    # The first window after the change from which every window is back under δ.
    recovered = next(
        (
            k
            for k in range(first_after, len(run.windows))
            if all(w <= delta * s for w, s in run.windows[k:])
        ),
        None,
    )
    served_until = sum(s for _, s in run.windows[first_after:recovered]) if recovered is not None else None
    timeline = " ".join(f"{w}/{s}" for w, s in run.windows)
    back = "never" if served_until is None else f"{served_until} served hits"
    return (
        f"{run.name}: served {run.served[0]} before the change wrong {before:.2%}, {run.served[1]} "
        f"after wrong {after:.2%}; changes found {run.changes}; back under δ after "
        f"{back}\n  windows (wrong/served): {timeline}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run every policy and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=60_000, help="requests (each brings a candidate)")
    parser.add_argument("--change-at", type=float, default=0.5, help="where in the stream the error jumps")
    parser.add_argument("--from", dest="from_confidence", type=float, default=0.96)
    parser.add_argument("--jump", type=float, default=0.2, help="added P(wrong) from the change on")
    parser.add_argument("--sample-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--deltas", type=float, nargs="+", default=[0.05, 0.1])
    args = parser.parse_args(argv)
    for delta in args.deltas:
        for detect in (True, False):
            print(describe(simulate(args, delta, detect), args, delta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
