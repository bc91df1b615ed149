"""What a forward pass costs, and how far real waits run past predicted ones: the two models
:class:`~extproc.embedding.batcher.Embedder` predicts a lookup's wait with (admission control)."""

from __future__ import annotations

OUTLIER = 4.0
"""A pass counts in the cost fit as at most this many times its prediction."""
STALE = 4.0
"""A sentence pass this many times faster than predicted restarts the fit (it was learned in a
crunch, or from an outlier, and sheds lookups the machine could serve)."""


class CostModel:
    """Seconds per forward pass as ``fixed + per_item * n``, fitted online to recent passes.

    An exponentially weighted least-squares fit: recent passes count most, so the model follows
    a machine that slows down (a noisy neighbour) or speeds up (a warmed cache).
    """

    def __init__(self, fixed: float = 0.005, per_item: float = 0.001, decay: float = 0.05) -> None:
        self.fixed, self.per_item = fixed, per_item
        self._decay = decay
        self._w = self._n = self._t = self._nn = self._nt = 0.0

    def observe(self, n: int, seconds: float) -> None:
        """Fold in one pass of ``n`` texts that took ``seconds`` (at most :data:`OUTLIER` times
        the prediction: one pass stalled by the scheduler, or a huge text, must not set the fit
        for the next hundred)."""
        self._fold(n, min(seconds, OUTLIER * self.seconds(n)))

    def _fold(self, n: int, seconds: float) -> None:
        keep = 1.0 - self._decay
        self._w = self._w * keep + 1.0
        self._n = self._n * keep + n
        self._t = self._t * keep + seconds
        self._nn = self._nn * keep + n * n
        self._nt = self._nt * keep + n * seconds
        mean_n, mean_t = self._n / self._w, self._t / self._w
        var = self._nn / self._w - mean_n * mean_n
        if var > 0.25:  # batch sizes vary enough to separate the fixed cost from the per-text one
            slope = (self._nt / self._w - mean_n * mean_t) / var
            self.per_item = max(slope, 1e-5)
            self.fixed = max(mean_t - self.per_item * mean_n, 0.0)
        else:  # one size seen so far: scale the whole cost with n
            self.per_item = max(mean_t / max(mean_n, 1.0) * 0.5, 1e-5)
            self.fixed = max(mean_t - self.per_item * mean_n, 0.0)

    def seconds(self, n: int) -> float:
        """Predicted duration of a pass of ``n`` texts."""
        return self.fixed + self.per_item * max(n, 1)

    def restart(self, n: int, seconds: float) -> None:
        """Forget the fit and start again from this pass (the fit was far off: see ``STALE``)."""
        self._w = self._n = self._t = self._nn = self._nt = 0.0
        self.fixed = self.per_item = 0.0
        self._fold(n, seconds)


class WaitCorrection:
    """How far real lookup waits run past their predictions, learned from every lookup.

    The queue model sees the passes it started, not the CPU they share with the event loop,
    Envoy, or word-vector passes queued in the same executor; under a CPU crunch its waits come
    out short, and a lookup admitted on such a prediction then waits out the whole latency
    budget before it is shed.  Scaling the prediction by the recent ratio of real to predicted
    waits (an exponentially weighted mean, clamped) makes admission shed at the door instead.
    The mean rises faster than it falls: an optimistic prediction costs a request its budget, a
    pessimistic one only a semantic lookup.
    """

    def __init__(self, up: float = 0.2, down: float = 0.1, low: float = 0.5, high: float = 10.0) -> None:
        self.factor = 1.0
        """Real wait / predicted wait, recently."""
        self._up, self._down, self._low, self._high = up, down, low, high

    def observe(self, predicted: float, waited: float) -> None:
        """Fold in one lookup predicted to wait ``predicted`` seconds that waited ``waited``."""
        if predicted <= 0:
            return
        ratio = min(self._high, max(self._low, waited / predicted))
        self.factor += (self._up if ratio > self.factor else self._down) * (ratio - self.factor)
