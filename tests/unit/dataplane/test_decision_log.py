"""The decision log: per-policy counts and the rate-limited warning about non-Latin prompts."""

from __future__ import annotations

import logging

import pytest

from extproc.dataplane.decision import Decision, DecisionLog
from extproc.observability.metrics import Metrics


def test_non_latin_prompts_are_counted_and_warned_about_once(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    log = DecisionLog(metrics, "memory", english_only=True)
    with caplog.at_level(logging.WARNING, logger="extproc.dataplane.decision"):
        for _ in range(3):
            log(Decision(outcome="miss", non_latin=True, policy="zh"))
    assert metrics.non_latin._value.get() == 3
    assert len([r for r in caplog.records if "English-only" in r.getMessage()]) == 1
    assert log.policy_counts == {"zh": 3}


def test_no_warning_with_a_multilingual_model(caplog: pytest.LogCaptureFixture) -> None:
    log = DecisionLog(Metrics(), "memory", english_only=False)
    with caplog.at_level(logging.WARNING, logger="extproc.dataplane.decision"):
        log(Decision(outcome="miss", non_latin=True))
    assert not caplog.records
