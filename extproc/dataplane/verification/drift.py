"""Change detection for the δ rule: groups whose recent outcomes contradict their bound start over.

The bound assumes a group's outcomes are exchangeable: the candidates it serves tomorrow are
wrong as often as those it was judged on. A new model version behind the same name, a new prompt
template or a new kind of traffic breaks that, and with every past outcome weighing as much as a
new one, a group that turned bad stayed served until its wrong outcomes outweighed its whole past.

So each group keeps its last :data:`KEEP` outcomes in order, and each pool of groups (a model's)
their last KEEP together; at each wrong outcome the ends of the record (the last 10, 20, 40, 80,
160 outcomes) are tested against the bounds they were decided under: if rates at those bounds would
give so many wrong ones with probability below ``alpha`` (split over the lengths tested), the
group has changed, or every group of the pool in that stretch has (a change across groups, which
each would be slow to show alone). The caller then counts only that end of each: the outcomes
before it no longer count for the group or for the curve, so the group is decided on what it does
now (:class:`~extproc.dataplane.verification.outcomes.Outcomes` also decides it on its own
outcomes alone until it has KEEP again).

A false alarm costs hit rate, never correctness: a group that did not change re-learns what it
had. With ``alpha`` 0.001 per test and a test only at a wrong outcome, a group at its bound raises
about one false alarm per thousand wrong outcomes, and a group well under it far fewer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

from extproc.dataplane.verification.stats import beta_cdf

KEEP = 160
"""Outcomes of a group remembered in order (the longest end tested)."""
LENGTHS = (10, 20, 40, 80, 160)
"""The ends of the record tested: a sharp change shows in a short one, a mild one in a long one."""
ALPHA = 1e-3
"""False-alarm probability of one test at a group's bound (over every length tested)."""
REFERENCE_CAP = 0.5
"""A group whose bound is above this says nothing a change could contradict: not tested."""


def binomial_tail(wrong: int, total: int, rate: float) -> float:
    """P(at least ``wrong`` wrong of ``total``) at a P(wrong) of ``rate``."""
    if wrong <= 0:
        return 1.0
    if wrong > total:
        return 0.0
    return beta_cdf(rate, wrong, total - wrong + 1)


class DriftDetector:
    """Recent outcomes per group and per pool of groups (a model's), tested at each wrong one
    against the bounds they were decided under."""

    def __init__(self, alpha: float = ALPHA) -> None:
        self.alpha = alpha
        self.recent: dict[Hashable, deque[bool]] = {}
        """group -> its last KEEP outcomes, oldest first (True: wrong)."""
        self.pooled: dict[Hashable, deque[tuple[Hashable, bool, float]]] = {}
        """pool -> its groups' last KEEP outcomes (group, wrong, the group's bound then)."""
        self.reference: dict[Hashable, float] = {}
        """group -> its bound at the latest decision about it."""
        self.changes = 0
        """Changes found since the process started (a pool's counts once)."""

    def decided(self, group: Hashable, bound: float) -> None:
        """The group's bound at a decision (what its outcomes are tested against)."""
        self.reference[group] = bound

    def observe(self, group: Hashable, wrong: bool, pool: Hashable = None) -> dict[Hashable, tuple[int, int]]:
        """Add an outcome of ``group`` (one of ``pool``'s). On a change, group -> (wrong, right)
        of its outcomes at the end of the record that showed it: what each group that changed
        should count from now on; empty otherwise."""
        record = self.recent.get(group)
        if record is None:
            record = self.recent[group] = deque(maxlen=KEEP)
        record.append(wrong)
        reference = self.reference.get(group)
        if reference is None or reference >= REFERENCE_CAP:
            return {}
        pooled = self.pooled.get(pool)
        if pooled is None:
            pooled = self.pooled[pool] = deque(maxlen=KEEP)
        pooled.append((group, wrong, reference))
        if not wrong:
            return {}
        # The group alone: a change in one kind of candidate.
        found = self._changed(list(record), [reference] * len(record))
        if found is not None:
            return self._restart({group: list(record)[-found:]})
        # Its pool: a change across groups (a new model version behind the name), which each
        # group, seeing a few outcomes of it, would be slow to show on its own.
        entries = list(pooled)
        found = self._changed([w for _, w, _ in entries], [r for _, _, r in entries])
        if found is None:
            return {}
        ends: dict[Hashable, list[bool]] = {}
        for each, was_wrong, _ in entries[-found:]:
            ends.setdefault(each, []).append(was_wrong)
        pooled.clear()
        return self._restart(ends)

    def observe_counts(
        self, group: Hashable, wrong: int, right: int, pool: Hashable = None
    ) -> dict[Hashable, tuple[int, int]]:
        """Add outcomes known only as counts (another process's, adopted at a sync), spread
        evenly in the record: their order is unknown, and putting the wrong ones last would
        raise alarms their real order may not."""
        total, changes = wrong + right, {}
        at = {int((j + 0.5) * total / wrong) for j in range(wrong)} if wrong else set()
        for i in range(total):
            changes.update(self.observe(group, i in at, pool))
        return changes

    def _restart(self, ends: dict[Hashable, list[bool]]) -> dict[Hashable, tuple[int, int]]:
        """Keep only ``ends`` in each group's record; their bounds no longer describe them."""
        self.changes += 1
        kept = {}
        for group, outcomes in ends.items():
            record = self.recent[group]
            record.clear()
            record.extend(outcomes)
            self.reference.pop(group, None)  # the next decision sets one
            kept[group] = (sum(outcomes), len(outcomes) - sum(outcomes))
        return kept

    def _changed(self, record: list[bool], references: list[float]) -> int | None:
        """The shortest end of ``record`` whose wrong outcomes the bounds they were decided
        under make too unlikely, or None. Outcomes of several bounds are tested against a
        binomial at their mean bound: its tail is at least theirs (Hoeffding, 1956)."""
        per_test = self.alpha / len(LENGTHS)
        for length in LENGTHS:
            if length > len(record):
                return None
            end = record[-length:]
            rate = sum(references[-length:]) / length
            if binomial_tail(sum(end), length, rate) < per_test:
                return length
        return None
