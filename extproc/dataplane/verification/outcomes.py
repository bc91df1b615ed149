"""Verified outcomes of semantic hits and what they bound: the false-hit rate and the δ rule.

Two estimates, from two kinds of outcome:

- **The false-hit rate of served hits** (per model): shadow verification re-asks a uniform
  random sample of served semantic hits, so wrong / verified estimates it without bias; its
  upper bound is the Wilson score bound (95 %, one-sided).
- **P(wrong) of a candidate about to be served** (the δ rule, after vCache, arXiv 2502.03771):
  outcomes are counted per group (model, confidence bin, similarity bin): shadowed hits and
  explorations (a candidate the rule did not serve, whose request went upstream and whose answer
  was then compared with the candidate's), this process's and those other processes shared
  (:mod:`.evidence`). A group's P(wrong) has two upper bounds: its own Beta posterior (prior:
  the offline calibration, mean 1 − the bin's middle confidence, worth ``prior_strength``
  observations) and one logistic curve per model over every group's counts, its prior the same
  calibration (:mod:`.bound`); a candidate is served when the lower of the two, at 99 %, is ≤ δ
  and its group's own outcomes do not show a rate above that, whatever the curve says. An entry
  with outcomes of its own may be served on them (its group's posterior as a prior, shrunk to at
  most ``ENTRY_PRIOR_CAP`` observations); one with a wrong outcome of its own never is. A group
  whose recent outcomes contradict its bound (:mod:`.drift`) counts only those from then on.
  docs/verification.md says what that guarantees.
"""

from __future__ import annotations

import logging
import math
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

from extproc.dataplane.verification.bound import Curve, fit
from extproc.dataplane.verification.drift import KEEP, DriftDetector
from extproc.dataplane.verification.stats import beta_upper, wilson_upper

log = logging.getLogger(__name__)

EDGES = (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.96, 0.98, 0.99, 0.995)
"""Lower edges of the confidence bins above the first ([0, 0.5)); the last is [0.995, 1]."""
SIMILARITY_EDGES = (0.9, 0.95, 0.98, 0.99)
"""Lower edges of the embedding-similarity bins above the first: within one confidence bin,
near-identical wordings are usually safer than mere look-alikes, and the rule can tell them apart."""
BOUND_LEVEL = 0.99
"""One-sided confidence of the δ rule's bound. Higher than LEVEL: the rule tests every group
again after each outcome and serves the groups that pass, and the ones that pass by luck are
the ones it serves (a selection effect that a 95 % bound measurably did not cover)."""
MAX_MODELS = 64
"""Models tracked by name; outcomes of others are pooled under ``other`` (bounded label set)."""
MAX_ENTRIES = 100_000
"""Entries whose own outcomes are remembered (least recently updated forgotten first)."""
ENTRY_PRIOR_CAP = 50.0
"""An entry's prior (its group's posterior) is worth at most this many observations."""


def bin_of(score: float) -> int:
    """The confidence bin of ``score`` (0 for below 0.5 … len(EDGES) for ≥ 0.995)."""
    return bisect_right(EDGES, score)


def similarity_bin(similarity: float) -> int:
    """The similarity bin of ``similarity``."""
    return bisect_right(SIMILARITY_EDGES, similarity)


def similarity_mid(index: int) -> float:
    """The middle similarity of similarity bin ``index`` (the first from the 0.8 prefilter)."""
    edges = (0.8, *SIMILARITY_EDGES, 1.0)
    return (edges[index] + edges[index + 1]) / 2


def bin_mid(index: int) -> float:
    """The middle confidence of bin ``index``."""
    lo = 0.0 if index == 0 else EDGES[index - 1]
    hi = 1.0 if index == len(EDGES) else EDGES[index]
    return (lo + hi) / 2


@dataclass
class Tally:
    """Verified outcomes of one group: how many agreed, disagreed, failed."""

    agree: int = 0
    disagree: int = 0
    error: int = 0

    @property
    def judged(self) -> int:
        """Outcomes with a verdict (errors excluded)."""
        return self.agree + self.disagree

    def rate(self) -> float | None:
        """The observed false-hit rate (None before the first verdict)."""
        return self.disagree / self.judged if self.judged else None

    def upper(self) -> float:
        """Its Wilson upper bound (1.0 before the first verdict)."""
        return wilson_upper(self.disagree, self.judged)


class Outcomes:
    """Every verified outcome, per model (served hits) and per (model, bin) and entry (the rule)."""

    def __init__(
        self, prior_strength: float = 10.0, level: float = BOUND_LEVEL, detect_changes: bool = True
    ) -> None:
        self.prior_strength = prior_strength
        self.level = level
        """Confidence of the δ rule's upper bound."""
        self.served: dict[str, Tally] = {}
        """Shadow verifications of served hits, per model: the false-hit rate."""
        self.bins: dict[tuple[str, int, int], list[float]] = {}
        """(model, confidence bin, similarity bin) -> [wrong, right] of every judged outcome."""
        self.entries: OrderedDict[str, list[float]] = OrderedDict()
        """entry id -> [wrong, right] of its own outcomes."""
        self.shared: dict[tuple[str, int, int], list[float]] = {}
        """Like ``bins``, what other processes observed (replicas, earlier runs): :meth:`adopt`."""
        self.drift = DriftDetector() if detect_changes else None
        """Finds groups whose recent outcomes contradict their bound (:mod:`.drift`)."""
        self.baseline: dict[tuple[str, int, int], list[float]] = {}
        """group -> [wrong, right] of its outcomes (own and shared) that no longer count: those
        before a change the detector found."""
        self.changed: set[tuple[str, int, int]] = set()
        """Groups decided on their own outcomes alone since a change, until they have KEEP."""
        self.on_change: Callable[[], None] | None = None
        """Called at each change the detector finds (the processor counts them in a metric)."""
        self._curves: dict[str, Curve] = {}
        """model -> its fitted curve, until the next outcome of it (learn) or adoption."""
        self._z = NormalDist().inv_cdf(level)

    @property
    def learned(self) -> int:
        """Outcomes this process learned (``bins`` only grow: a sync writes when this moved)."""
        return int(sum(wrong + right for wrong, right in self.bins.values()))

    @property
    def adopted(self) -> int:
        """Outcomes other processes learned, as last adopted."""
        return int(sum(wrong + right for wrong, right in self.shared.values()))

    @property
    def changes(self) -> int:
        """Changes the detector found since the process started (0 without detection)."""
        return self.drift.changes if self.drift is not None else 0

    def model_key(self, model: str) -> str:
        """``model``, or ``other`` once MAX_MODELS models are tracked (a bounded label set)."""
        if model in self.served or len(self.served) < MAX_MODELS:
            return model
        return "other"

    def record_served(self, model: str, result: str) -> None:
        """A shadow verification of a served hit ended: ``agree`` | ``disagree`` | ``error``."""
        tally = self.served.setdefault(self.model_key(model), Tally())
        setattr(tally, result, getattr(tally, result) + 1)

    def _bin(self, model: str, score: float, similarity: float) -> tuple[str, int, int]:
        # By the model's own name: pooled as "other" (the served-rate label's bound), a model
        # would be served on another's record, and one that earned trust lose it to the 65th.
        return model, bin_of(score), similarity_bin(similarity)

    def learn(self, model: str, entry_id: str, score: float, wrong: bool, similarity: float = 1.0) -> None:
        """A judged outcome of a candidate with confidence ``score``: evidence for the rule."""
        key = self._bin(model, score, similarity)
        counts = self.bins.setdefault(key, [0.0, 0.0])
        counts[0 if wrong else 1] += 1
        self._curves.pop(model, None)
        if self.drift is not None:
            self._restart(self.drift.observe(key, wrong, model))
        own = self.entries.pop(entry_id, None) or [0.0, 0.0]
        own[0 if wrong else 1] += 1
        self.entries[entry_id] = own
        while len(self.entries) > MAX_ENTRIES:
            self.entries.popitem(last=False)

    def curve(self, model: str) -> Curve:
        """The fitted curve of ``model``'s P(wrong) over every group (its own outcomes and shared)."""
        found = self._curves.get(model)
        if found is None:
            groups = [
                (bin_mid(c), similarity_mid(sim), *self._counts((m, c, sim)))
                for m, c, sim in sorted(self.bins.keys() | self.shared.keys())  # one order: one fit
                if m == model
            ]
            found = self._curves[model] = fit(groups, self.prior_strength)
        return found

    def group_counts(self, model: str, score: float, similarity: float) -> tuple[float, float]:
        """(wrong, right) of the candidate's group, this process's and shared, since its last change."""
        return self._counts(self._bin(model, score, similarity))

    def _totals(self, key: tuple[str, int, int]) -> tuple[float, float]:
        """(wrong, right) of every outcome of the group ever counted, own and shared."""
        wrong, right = self.bins.get(key, (0.0, 0.0))
        others_wrong, others_right = self.shared.get(key, (0.0, 0.0))
        return wrong + others_wrong, right + others_right

    def _counts(self, key: tuple[str, int, int]) -> tuple[float, float]:
        """(wrong, right) of the group's outcomes that count: those since its last change."""
        wrong, right = self._totals(key)
        before_wrong, before_right = self.baseline.get(key, (0.0, 0.0))
        return max(0.0, wrong - before_wrong), max(0.0, right - before_right)

    def _restart(self, changed: dict[tuple[str, int, int], tuple[int, int]]) -> None:
        """The detector found these groups changed: only their last (wrong, right) outcomes
        count from now on (the curve's fit of their model with them)."""
        if not changed:
            return
        for key, (kept_wrong, kept_right) in changed.items():
            wrong, right = self._totals(key)
            self.baseline[key] = [max(0.0, wrong - kept_wrong), max(0.0, right - kept_right)]
            self._curves.pop(key[0], None)
            self.changed.add(key)
        if self.on_change is not None:
            self.on_change()
        wrong = sum(w for w, _ in changed.values())
        total = sum(w + r for w, r in changed.values())
        log.warning(
            "verification: the outcomes of model %s changed (%d wrong of the last %d, in %d "
            "confidence/similarity group(s) from confidence %.3f); their older outcomes no longer count",
            next(iter(changed))[0],
            wrong,
            total,
            len(changed),
            min(bin_mid(key[1]) for key in changed),
        )

    def upper(self, model: str, score: float, entry_id: str = "", similarity: float = 1.0) -> float:
        """The upper bound (at ``level``) of P(wrong) for such a candidate; 1 for an entry found
        wrong before (one found wrong once is out, whatever its group's evidence)."""
        own = self.entries.get(entry_id) if entry_id else None
        if own is not None and own[0] > 0:
            # Shrunk against its group, one wrong only lifts the bound to ~0.1: served
            # again at δ ≥ 0.1 although this very entry is known to answer its look-alikes wrongly.
            return 1.0
        key = self._bin(model, score, similarity)
        confidence, middle = bin_mid(key[1]), similarity_mid(key[2])
        wrong, right = self._counts(key)
        # The group alone: a Beta posterior, the calibration worth prior_strength observations.
        a = 0.5 + self.prior_strength * (1.0 - confidence) + wrong
        b = 0.5 + self.prior_strength * confidence + right
        alone = beta_upper(a, b, self.level)
        # Every group together (the curve): far fewer outcomes per group where they agree. Not
        # for a group that just changed: its change contradicted the curve's bound, and the curve,
        # fitted mostly on the other groups, would lend it their past again.
        bound = alone
        if key not in self.changed or wrong + right >= KEEP:
            self.changed.discard(key)
            bound = min(alone, self.curve(model).upper(confidence, middle, self._z))
        if wrong:  # the curve is a model: a group whose own outcomes show it worse is held to them
            bound = max(bound, beta_upper(0.5 + wrong, 0.5 + right, 1.0 - self.level))
        if self.drift is not None:
            self.drift.decided(key, bound)
        if own is not None:  # outcomes of its own (all right), its group's posterior as a prior
            shrink = min(1.0, ENTRY_PRIOR_CAP / (a + b))
            bound = min(bound, beta_upper(a * shrink, b * shrink + own[1], self.level))
        return bound

    def export(self) -> list[list[str | float]]:
        """This process's evidence: [model, confidence bin, similarity bin, wrong, right] rows."""
        return [[m, c, sim, wrong, right] for (m, c, sim), (wrong, right) in sorted(self.bins.items())]

    def adopt(self, others: list[list[list[str | float]]]) -> None:
        """Take ``others`` (rows of :meth:`export` from other processes) as the shared evidence,
        replacing what was adopted before; rows that do not read as such are skipped."""
        shared: dict[tuple[str, int, int], list[float]] = {}
        for rows in others:
            for row in rows:
                try:
                    model, c, sim, wrong, right = row
                    key = (str(model), int(c), int(sim))
                    counts = [float(wrong), float(right)]
                except (TypeError, ValueError):
                    continue
                if min(counts) < 0 or not all(math.isfinite(n) for n in counts):
                    continue
                total = shared.setdefault(key, [0.0, 0.0])
                total[0] += counts[0]
                total[1] += counts[1]
        before, self.shared = self.shared, shared  # what a sync added is the difference
        self._curves.clear()
        if self.drift is None:
            return
        for key, (wrong, right) in shared.items():
            seen = before.get(key, (0.0, 0.0))
            # Counts that fell (a process's document aged out) bring no new outcome.
            new_wrong, new_right = int(max(0.0, wrong - seen[0])), int(max(0.0, right - seen[1]))
            if new_wrong + new_right:
                self._restart(self.drift.observe_counts(key, new_wrong, new_right, key[0]))

    def forget(self, entry_id: str) -> None:
        """Drop an entry's own outcomes (it was deleted)."""
        self.entries.pop(entry_id, None)

    def rates(self) -> dict[str, tuple[float | None, float, Tally]]:
        """Per model: (false-hit rate, its upper bound, the tally) of the served hits verified."""
        return {model: (t.rate(), t.upper(), t) for model, t in self.served.items()}
