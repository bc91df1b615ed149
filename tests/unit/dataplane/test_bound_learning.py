"""The false-hit bound learns from every explored request and keeps each model's evidence its own."""

from __future__ import annotations

from dataclasses import replace

from extproc.config.verification import VerificationSettings
from extproc.dataplane.processors import ChatCompletionsProcessor
from extproc.dataplane.verification import Verification
from extproc.protocol.messages import NO_RESPONSE_BODY
from tests.support.shadow import Harness, P
from tests.unit.dataplane.test_processors import (
    CHAT,
    chat_body,
    completion,
    headers,
    make_shared,
    miss_and_store,
    run_spawned,
)


async def test_evidence_stays_per_model_past_the_metric_label_limit() -> None:
    """The served-rate metric pools models past 64 as "other"; the bound must not: a model would
    be served on another's record, and one that earned trust would lose it."""
    h = Harness("http://127.0.0.1:9", sample_rate=0.0, max_false_hit_rate=0.05)
    candidate = await h.store(P, "v:1,0,0")
    for i in range(300):
        h.v.outcomes.learn("early", f"e{i}", 0.995, False, 0.995)
    assert h.v.allows("early", replace(candidate, model="early"), 0.995, 0.995)
    for i in range(64):
        h.v.outcomes.record_served(f"lora-{i}", "agree")
    assert h.v.outcomes.model_key("lora-99") == "other"  # the label set stays bounded
    assert h.v.allows("early", replace(candidate, model="early"), 0.995, 0.995)
    for i in range(300):
        h.v.outcomes.learn("good", f"g{i}", 0.995, False, 0.995)
    unknown = replace(candidate, model="never-judged", exact_key="b" * 64)
    assert not h.v.allows("never-judged", unknown, 0.995, 0.995)


async def test_an_explored_no_store_request_is_learned_from() -> None:
    """Not storing its answer is no reason not to compare it: else such traffic explores forever."""
    shared, decisions, pending = make_shared(similarity_threshold=0.9)
    verification = VerificationSettings(max_false_hit_rate=0.2, entry_secret="s")
    shared.settings = replace(shared.settings, verification=verification)
    shared.verification = Verification(lambda: verification, shared.cache, pending.append)
    await miss_and_store(shared, pending, "v:1,0,0", "v:1,0")
    p = ChatCompletionsProcessor(shared)
    p.on_request_headers(headers([*CHAT, ("cache-control", "no-store")]), False)
    await p.on_request_body(chat_body("v:1,0.05,0"), True)
    assert p.decision.outcome == "miss" and "bound" in p.decision.rejected_by
    reply = p.on_response_headers(headers([(":status", "200"), ("content-type", "application/json")]), False)
    assert reply.mode_override != NO_RESPONSE_BODY  # the body is still read, to be compared
    p.on_response_body(completion("v:1,0"), True)
    await run_spawned(pending)
    assert shared.verification.outcomes.learned == 1
    assert decisions[-1].store != "stored"
    assert await shared.cache.entry(p._query.exact_key) is None  # no-store: still not stored
