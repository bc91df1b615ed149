"""A small circuit breaker: stop calling a failing dependency, probe it again with backoff."""

from __future__ import annotations

import time


class CircuitBreaker:
    """closed → (N consecutive failures) → open → (cool-down) → half-open → one probe → closed/open.

    The cool-down doubles after each failed probe, up to ``max_reset``.
    """

    def __init__(self, failure_threshold: int = 3, reset_after: float = 1.0, max_reset: float = 30.0) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self.max_reset = max_reset
        self._failures = 0
        self._opened_at = 0.0
        self._cooldown = reset_after
        self._probing = False
        self.state = "closed"
        self.opened = 0
        """How many times the breaker has opened (for metrics)."""

    def allow(self) -> bool:
        """May a call go through now?"""
        if self.state == "closed":
            return True
        if self.state == "open" and time.monotonic() - self._opened_at >= self._cooldown:
            self.state = "half_open"
            self._probing = False
        if self.state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        """A call succeeded."""
        self._failures = 0
        self._cooldown = self.reset_after
        self._probing = False
        self.state = "closed"

    def failure(self) -> None:
        """A call failed."""
        self._failures += 1
        if self.state == "half_open":
            self._cooldown = min(self._cooldown * 2, self.max_reset)
            self._open()
        elif self.state == "closed" and self._failures >= self.failure_threshold:
            self._open()

    def release(self) -> None:
        """A call ended with no verdict on the dependency's health (its data was refused).

        Counts neither way, so one caller's bad data can never open the breaker; a half-open
        probe slot is freed so that the next call probes instead of waiting forever.
        """
        self._probing = False

    def _open(self) -> None:
        self.state = "open"
        self._opened_at = time.monotonic()
        self._probing = False
        self.opened += 1
