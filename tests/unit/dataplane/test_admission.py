"""Admission control: what is left of the latency budget for a lookup."""

from __future__ import annotations

import pytest

from extproc.dataplane.admission import EXACT_LOOKUP_FLOOR, lookup_budget


def test_no_budget_means_no_admission_control() -> None:
    assert lookup_budget(0, 1.5, elapsed=3.0, loop_lag=1.0) == (None, 1.5)


def test_the_budget_counts_from_arrival_and_charges_the_loop_lag() -> None:
    max_wait, timeout = lookup_budget(150, 1.5, elapsed=0.040, loop_lag=0.010)
    assert max_wait == pytest.approx(0.100)
    assert timeout == pytest.approx(0.100)  # the lookup is cut off where the budget ends


def test_the_backend_timeout_still_applies_when_smaller() -> None:
    assert lookup_budget(5000, 1.5, elapsed=0.0, loop_lag=0.0) == (5.0, 1.5)


def test_a_spent_budget_keeps_only_the_exact_lookup() -> None:
    max_wait, timeout = lookup_budget(150, 1.5, elapsed=0.2, loop_lag=0.05)
    assert max_wait is not None and max_wait < 0  # check() sheds the semantic half at once
    assert timeout == EXACT_LOOKUP_FLOOR
