"""The δ rule's model of P(wrong): one logistic curve over every group's verified outcomes.

A group of candidates (:mod:`.outcomes`: a confidence bin and a similarity bin) rarely gathers the
hundreds of outcomes a bound of a few percent needs on its own, yet its neighbours say much about
it: P(wrong) falls as the confidence and the similarity rise. So the groups' counts are read
together, as binomial outcomes of one curve per model:

    logit P(wrong) = β0 + β1 · logit(1 − c) + β2 · (s − 0.9) / 0.1

with c and s the middle confidence and similarity of the group. The prior is the offline
calibration, P(wrong) = 1 − c, i.e. β = (0, 1, 0), with standard deviations (1, 0.5, 1) at the
default ``prior_strength`` of 10 (its precision scales with the strength: 0 leaves the
observations alone, and then nothing is served before there are some). The posterior is the
Laplace approximation at its mode (Newton's method; three numbers, so microseconds), and a
group's bound is the curve at the ``level`` upper quantile of its linear predictor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

PRIOR_MEAN = np.array([0.0, 1.0, 0.0])
"""The offline calibration as a curve: P(wrong) = 1 − c, whatever the similarity."""
PRIOR_SD = np.array([1.0, 0.5, 1.0])
"""The prior's standard deviations at the default strength (DEFAULT_STRENGTH)."""
DEFAULT_STRENGTH = 10.0
"""``prior_strength`` at which the prior has PRIOR_SD; precision ∝ strength."""
FLOOR = 1e-4
"""The smallest 1 − c read (a confidence of 1.0 would be an infinite logit)."""
NEWTON_STEPS = 50
MIN_STEP = 1e-8
"""The smallest fraction of a Newton step tried before the fit counts as converged."""


def features(confidence: float, similarity: float) -> np.ndarray:
    """The curve's inputs for a group of middle ``confidence`` and ``similarity``."""
    p = min(max(1.0 - confidence, FLOOR), 1.0 - FLOOR)
    return np.array([1.0, math.log(p / (1.0 - p)), (similarity - 0.9) / 0.1])


@dataclass(frozen=True)
class Curve:
    """A fitted curve: the posterior mode and covariance of β."""

    beta: np.ndarray
    cov: np.ndarray

    def upper(self, confidence: float, similarity: float, z: float) -> float:
        """P(wrong) at the linear predictor's mode plus ``z`` standard deviations."""
        x = features(confidence, similarity)
        spread = math.sqrt(max(float(x @ self.cov @ x), 0.0))
        return _sigmoid(float(x @ self.beta) + z * spread)


def fit(groups: Iterable[tuple[float, float, float, float]], strength: float) -> Curve:
    """The posterior of β from (confidence, similarity, wrong, right) counts of each group.

    Newton's method with each step halved until the log posterior does not fall: it is concave,
    so this reaches its one maximum. Plain steps flipped between two far-off curves on a few
    outcomes (21, two of them wrong at confidence 0.995+) and certified P(wrong) 1e-11 where the
    maximum says 0.87."""
    rows = [(c, s, w, r) for c, s, w, r in groups if w + r > 0]
    precision = np.diag(max(strength, 0.0) / DEFAULT_STRENGTH / PRIOR_SD**2)
    precision += np.eye(3) * 1e-6  # keeps the Hessian invertible with no prior and no evidence
    x = np.array([features(c, s) for c, s, _, _ in rows]).reshape(-1, 3)
    wrong = np.array([w for _, _, w, _ in rows], dtype=float)
    total = np.array([w + r for _, _, w, r in rows], dtype=float)

    def log_posterior(beta: np.ndarray) -> float:
        eta, away = x @ beta, beta - PRIOR_MEAN
        return float(wrong @ eta - total @ np.logaddexp(0.0, eta) - 0.5 * away @ precision @ away)

    beta = PRIOR_MEAN.copy()
    current = log_posterior(beta)
    for _ in range(NEWTON_STEPS):
        p = _sigmoids(x @ beta)
        gradient = precision @ (beta - PRIOR_MEAN) + x.T @ (total * p - wrong)
        hessian = precision + (x * (total * p * (1.0 - p))[:, None]).T @ x
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while (trial := log_posterior(beta - scale * step)) < current and scale > MIN_STEP:
            scale /= 2
        if trial < current:
            break  # no step up any more: at the maximum, to float precision
        beta, current = beta - scale * step, trial
        if float(np.abs(scale * step).max()) < 1e-9:
            break
    p = _sigmoids(x @ beta)
    hessian = precision + (x * (total * p * (1.0 - p))[:, None]).T @ x
    return Curve(beta, np.linalg.inv(hessian))


def _sigmoid(eta: float) -> float:
    if math.isnan(eta):
        return 1.0  # a fit gone wrong serves nothing
    return 1.0 / (1.0 + math.exp(-eta)) if eta > -700 else 0.0


def _sigmoids(eta: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(eta, -700.0, 700.0)))
