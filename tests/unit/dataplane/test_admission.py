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


async def test_a_request_that_waited_past_the_budget_gets_only_the_exact_lookup() -> None:
    """Time spent before the processor saw the body (a starved loop) counts against the budget."""
    from extproc.dataplane.processors import ChatCompletionsProcessor
    from tests.unit.dataplane.test_processors import CHAT, chat_body, headers, make_shared, miss_and_store

    shared, _, pending = make_shared(max_added_latency_ms=100)
    await miss_and_store(shared, pending, "capital of spain?", "Madrid")
    encoded = shared.cache.embedder.encoded

    late_exact = ChatCompletionsProcessor(shared)
    late_exact.arrived -= 0.5  # its first message was received half a second ago
    late_exact.on_request_headers(headers(CHAT), False)
    reply = await late_exact.on_request_body(chat_body("capital of spain?"), True)
    assert reply.immediate_response is not None  # the exact key needs no embedding: still a hit

    late_new = ChatCompletionsProcessor(shared)
    late_new.arrived -= 0.5
    late_new.on_request_headers(headers(CHAT), False)
    reply = await late_new.on_request_body(chat_body("capital city of spain?"), True)
    assert reply.request_body is not None and late_new.decision.outcome == "bypass"
    assert late_new.decision.reason == "overloaded"
    assert shared.cache.embedder.encoded == encoded  # shed before embedding anything

    on_time = ChatCompletionsProcessor(shared)
    on_time.on_request_headers(headers(CHAT), False)
    await on_time.on_request_body(chat_body("capital city of spain?"), True)
    assert on_time.decision.reason != "overloaded" and shared.cache.embedder.encoded == encoded + 1
