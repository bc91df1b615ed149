"""The δ rule's change detection: a group whose recent outcomes contradict its bound starts over."""

from __future__ import annotations

import math
import random

from extproc.dataplane.verification import Outcomes
from extproc.dataplane.verification.drift import LENGTHS, DriftDetector, binomial_tail
from extproc.dataplane.verification.outcomes import bin_of, similarity_bin

SCORE, SIMILARITY, DELTA = 0.975, 0.96, 0.05
GROUP = (bin_of(SCORE), similarity_bin(SIMILARITY))


def exact_tail(wrong: int, total: int, rate: float) -> float:
    return sum(math.comb(total, k) * rate**k * (1 - rate) ** (total - k) for k in range(wrong, total + 1))


def test_binomial_tail_is_exact() -> None:
    for wrong, total, rate in ((1, 10, 0.05), (4, 20, 0.04), (9, 160, 0.02), (0, 5, 0.3), (20, 20, 0.5)):
        assert math.isclose(binomial_tail(wrong, total, rate), exact_tail(wrong, total, rate), rel_tol=1e-9)
    assert binomial_tail(3, 2, 0.5) == 0.0


def served(detect: bool) -> Outcomes:
    """A group earned its bound: 600 outcomes, 1 % wrong, and a decision served it."""
    outcomes = Outcomes(detect_changes=detect)
    for i in range(600):
        outcomes.learn("m", f"e{i}", SCORE, wrong=i % 100 == 50, similarity=SIMILARITY)
    assert outcomes.upper("m", SCORE, "", SIMILARITY) <= DELTA
    return outcomes


def test_a_group_that_turns_bad_is_found_and_held_to_what_it_does_now() -> None:
    with_detector, without = served(True), served(False)
    rng = random.Random(3)
    turned = [rng.random() < 0.3 for _ in range(40)]  # the group is now wrong 30 % of the time
    stopped = None
    for i, wrong in enumerate(turned):
        for outcomes in (with_detector, without):
            outcomes.upper("m", SCORE, "", SIMILARITY)  # a decision about the group between outcomes
            outcomes.learn("m", f"x{i}", SCORE, wrong=wrong, similarity=SIMILARITY)
        if stopped is None and with_detector.upper("m", SCORE, "", SIMILARITY) > DELTA:
            stopped = i + 1
    assert stopped is not None and stopped <= 20, stopped
    assert with_detector.drift is not None and with_detector.drift.changes == 1
    wrong, right = with_detector.group_counts("m", SCORE, SIMILARITY)
    assert wrong + right < 60  # the 600 outcomes before the change no longer count
    # Without it the 600 earlier outcomes outweigh the 40 new ones: still served at 30 % wrong.
    assert without.upper("m", SCORE, "", SIMILARITY) <= DELTA


def test_no_alarm_while_a_group_stays_as_its_bound_says() -> None:
    outcomes = served(True)
    rng = random.Random(7)
    for i in range(3000):  # 1 % wrong, well under its bound, in random order
        if i % 10 == 0:
            outcomes.upper("m", SCORE, "", SIMILARITY)
        outcomes.learn("m", f"s{i}", SCORE, wrong=rng.random() < 0.01, similarity=SIMILARITY)
    assert outcomes.drift is not None and outcomes.drift.changes == 0
    assert outcomes.upper("m", SCORE, "", SIMILARITY) <= DELTA


def test_another_process_seeing_the_change_restarts_the_group_here_too() -> None:
    here = served(True)
    here.upper("m", SCORE, "", SIMILARITY)
    here.adopt([[["m", *GROUP, 0.0, 0.0]]])  # nothing yet from the other replica
    here.adopt([[["m", *GROUP, 12.0, 28.0]]])  # then 40 outcomes there, 12 wrong
    assert here.drift is not None and here.drift.changes == 1
    assert here.upper("m", SCORE, "", SIMILARITY) > DELTA
    # A document that ages out lowers the shared counts: no outcome, no alarm, never negative.
    here.adopt([])
    wrong, right = here.group_counts("m", SCORE, SIMILARITY)
    assert wrong >= 0 and right >= 0 and here.drift.changes == 1


def test_counts_are_spread_in_the_record_not_put_last() -> None:
    detector = DriftDetector()
    detector.decided("g", 0.05)
    assert detector.observe_counts("g", 2, 78) == {}  # 2.5 %: nothing to see
    assert list(detector.recent["g"]).count(True) == 2
    assert detector.recent["g"][-1] is False  # the wrong ones were spread, not appended last


def test_without_a_decision_nothing_is_tested() -> None:
    detector = DriftDetector()
    for _ in range(max(LENGTHS)):
        assert detector.observe("g", True) == {}  # no bound to contradict yet
    detector.decided("g", 0.9)
    assert detector.observe("g", True) == {}  # a bound that high says nothing


def test_a_change_across_groups_is_found_in_their_pool() -> None:
    """A new model version behind the name: every served group turns bad a little; each sees too
    few outcomes to show it alone, their pool shows it."""
    groups = [(c, s) for c in (0.91, 0.94, 0.97, 0.985) for s in (0.92, 0.96, 0.985)]
    with_detector, without = Outcomes(), Outcomes(detect_changes=False)
    for outcomes in (with_detector, without):
        for score, similarity in groups:
            for i in range(150):
                outcomes.learn(
                    "m", f"e{score}{similarity}{i}", score, wrong=i % 75 == 10, similarity=similarity
                )
    served = [g for g in groups if with_detector.upper("m", g[0], "", g[1]) <= 0.1]
    assert len(served) >= 6
    rng = random.Random(5)
    for i in range(60):  # 60 outcomes spread over the served groups, now wrong 35 % of the time
        score, similarity = served[i % len(served)]
        wrong = rng.random() < 0.35
        for outcomes in (with_detector, without):
            outcomes.upper("m", score, "", similarity)
            outcomes.learn("m", f"x{i}", score, wrong=wrong, similarity=similarity)
    assert with_detector.drift is not None and with_detector.drift.changes >= 1
    still = [g for g in served if with_detector.upper("m", g[0], "", g[1]) <= 0.1]
    assert len(still) < len(served) / 2, still
    assert all(without.upper("m", g[0], "", g[1]) <= 0.1 for g in served)  # 5 each: not enough alone
