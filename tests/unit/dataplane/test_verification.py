"""Verification's parts without a network: the bounds, the δ rule, entry ids, the shadow gate, config."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from extproc.cache import CacheQuery, MemoryBackend, SemanticCache
from extproc.cache.schema import CacheEntry
from extproc.config.settings import parse_config
from extproc.config.verification import ENTRY_SECRET_ENV, VerificationSettings
from extproc.dataplane.verification import EntryIds, Outcomes, Shadow, Verification
from extproc.dataplane.verification.agreement import agree
from extproc.dataplane.verification.outcomes import MAX_MODELS, beta_upper, bin_of, wilson_upper
from extproc.embedding.batcher import Embedder
from extproc.errors import ConfigError
from tests.support.toy import DIM, toy_encode


def test_beta_upper_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for a, b in ((0.5, 0.5), (1.5, 20.0), (3.0, 400.0), (50.0, 2.0), (0.7, 9.8)):
        assert beta_upper(a, b) == pytest.approx(stats.beta.ppf(0.95, a, b), abs=1e-9)


def test_wilson_upper() -> None:
    assert wilson_upper(0, 0) == 1.0
    assert wilson_upper(0, 100) == pytest.approx(0.0263, abs=1e-3)  # 1.645² / (100 + 1.645²)
    assert wilson_upper(5, 100) > 0.05 > wilson_upper(0, 1000)


def test_the_rule_needs_evidence_and_unlearns_on_mistakes() -> None:
    outcomes = Outcomes(prior_strength=10)
    assert outcomes.upper("m", 0.995) > 0.02  # the calibration alone never clears δ = 2 %
    for i in range(300):
        outcomes.learn("m", f"e{i}", 0.995, wrong=False)
    assert outcomes.upper("m", 0.995) <= 0.02
    assert outcomes.upper("m", 0.7) > 0.02  # another bin has no evidence
    assert outcomes.upper("other-model", 0.995) > 0.02
    for i in range(20):
        outcomes.learn("m", f"w{i}", 0.995, wrong=True)
    assert outcomes.upper("m", 0.995) > 0.02


def test_an_entry_with_outcomes_of_its_own() -> None:
    outcomes = Outcomes(prior_strength=10)
    for i in range(400):
        outcomes.learn("m", f"e{i}", 0.95, wrong=i % 25 == 0)  # 4 % wrong in the bin
    bin_bound = outcomes.upper("m", 0.95)
    for _ in range(300):
        outcomes.learn("m", "popular", 0.95, wrong=False)
    assert outcomes.upper("m", 0.95, "popular") < outcomes.upper("m", 0.95)
    outcomes.learn("m", "bad", 0.95, wrong=True)
    assert outcomes.upper("m", 0.95, "bad") > bin_bound
    outcomes.forget("bad")
    assert "bad" not in outcomes.entries


def test_an_entry_found_wrong_once_is_out_whatever_its_group() -> None:
    outcomes = Outcomes(prior_strength=10)
    outcomes.learn("m", "bad", 0.995, wrong=True, similarity=0.995)
    for i in range(300):
        outcomes.learn("m", f"e{i}", 0.995, wrong=False, similarity=0.995)
    assert outcomes.upper("m", 0.995, "", 0.995) < 0.05  # the group is served at δ = 0.05
    for _ in range(50):  # nor do later agreements of its own bring it back
        outcomes.learn("m", "bad", 0.995, wrong=False, similarity=0.995)
    assert outcomes.upper("m", 0.995, "bad", 0.995) == 1.0  # > every δ (at most 0.5)


def test_served_tally_and_the_model_cap() -> None:
    outcomes = Outcomes()
    for i in range(MAX_MODELS + 5):
        outcomes.record_served(f"m{i}", "agree")
    outcomes.record_served("m0", "disagree")
    outcomes.record_served("m0", "error")
    rates = outcomes.rates()
    assert len(rates) == MAX_MODELS + 1 and rates["other"][2].agree == 5
    rate, upper, tally = rates["m0"]
    assert (rate, tally.error, tally.judged) == (0.5, 1, 2) and upper > 0.5
    assert bin_of(0.3) == 0 and bin_of(0.999) == bin_of(1.0) and bin_of(0.95) < bin_of(0.97)


def test_entry_ids_are_bound_to_the_partition_the_secret_and_the_version() -> None:
    ids = EntryIds("secret")
    key, created = "a" * 64, 1_700_000_000.1234
    token = ids.issue("partition-1", key, created)
    assert EntryIds.parse(token) == (key, 1_700_000_000_123) and len(token) == 111
    assert ids.valid(token, "partition-1", created)
    assert not ids.valid(token, "partition-2", created)
    assert not ids.valid(token, "partition-1", created + 0.002)  # a newer entry under the key
    assert not EntryIds("other").valid(token, "partition-1", created)
    assert not EntryIds().valid(EntryIds().issue("p", key, created), "p", created)  # random secrets
    moved = token.replace(".1700000000123.", ".1700000000124.")  # the time is under the tag too
    assert not ids.valid(moved, "partition-1", created + 0.001)
    for bad in ("", "x", key, key + ".zz", f"{key}.{token[-32:]}", token + "0", token.upper()):
        assert not ids.valid(bad, "partition-1", created)


async def test_agreement_by_the_same_text_or_embedding() -> None:
    embedder = Embedder(toy_encode, DIM)
    one = {"choices": [{"message": {"content": "Paris is the capital of France."}}]}
    same = {"choices": [{"message": {"content": "Paris is the capital of France."}}]}
    other = {"choices": [{"message": {"content": "Unplug the router and wait."}}]}
    assert await agree(embedder, one, same, 0.9) == (True, 1.0)
    vectors = toy_encode(["Paris is the capital of France.", "Unplug the router and wait."])
    assert await agree(embedder, one, other, 0.99) == (False, pytest.approx(float(vectors[0] @ vectors[1])))
    empty = {"choices": [{"message": {"content": ""}}]}
    assert (await agree(embedder, empty, empty, 0.9))[0] is True
    assert await agree(embedder, empty, one, 0.0) == (False, 0.0)  # tool calls only vs a text


def make_verification(rng: float = 0.0, **settings: Any) -> tuple[Verification, list[Any]]:
    """A Verification over the memory backend whose spawned work is collected, not run."""
    cache = SemanticCache(MemoryBackend(DIM, 100), Embedder(toy_encode, DIM), 0.9, 5, 60)
    spawned: list[Any] = []
    values = VerificationSettings(**({"upstream_url": "http://127.0.0.1:9"} | settings))
    return Verification(lambda: values, cache, spawned.append, rng=lambda: rng), spawned


def job(body: bytes = b'{"model": "m", "messages": []}') -> Shadow:
    """A shadow job of a semantic hit."""
    query = CacheQuery("m", "global", "f", "q", "p", "k" * 64)
    entry = CacheEntry("e", "m", "global", "f", "p", "e" * 64, "q", {}, np.zeros(DIM), time.time())
    return Shadow("/v1/chat/completions", {}, body, "", lambda b, n: {}, 1, query, entry, 0.9, 0.95, 60)


def test_the_shadow_gate_samples_and_holds_its_limits() -> None:
    v, spawned = make_verification(rng=0.5, sample_rate=0.4)
    assert not v.shadow(job()) and not spawned  # not sampled
    v, spawned = make_verification(sample_rate=1.0, max_concurrency=2, max_per_minute=3)
    assert [v.shadow(job()) for _ in range(3)] == [True, True, False]
    assert v.skipped["concurrency"] == 1 and v.inflight == 2 == v.peak_inflight
    v.inflight = 0  # the two finished
    assert [v.shadow(job()) for _ in range(2)] == [True, False]
    assert v.skipped["budget"] == 1 and len(spawned) == 3
    for s in spawned:
        s.close()


async def test_a_request_with_tools_is_not_repeated_and_costs_no_budget() -> None:
    """Read from the request itself in the task ("tools": [] or a prompt saying "functions"
    declares none); a skipped one gives its per-minute call back."""
    v, spawned = make_verification(sample_rate=1.0, max_per_minute=1)
    assert v.shadow(job(b'{"model": "m", "tools": [{"type": "function"}], "messages": []}'))
    await spawned.pop()
    assert v.skipped["side_effects"] == 1 and v.inflight == 0
    no_tools = b'{"model": "m", "tools": [], "messages": [{"role": "user", "content": "functions"}]}'
    assert v.shadow(job(no_tools))
    spawned.pop().close()
    assert v.skipped["side_effects"] == 1


def test_without_a_bound_every_candidate_is_served() -> None:
    v, _ = make_verification()
    assert v.allows("m", job().entry, 0.1, 0.9)
    v, _ = make_verification(max_false_hit_rate=0.02)
    assert not v.allows("m", job().entry, 0.999, 0.999)


async def test_feedback_needs_an_issued_id_of_a_live_entry() -> None:
    v, _ = make_verification()
    vector = np.ones(DIM, dtype=np.float32) / np.sqrt(DIM)
    query = CacheQuery("m", "global", "f", "hello there", "part", "b" * 64)
    stored = await v.cache.store(query, {"choices": []}, vector)
    token = v.ids.issue("part", "b" * 64, stored.created_at)
    assert not await v.feedback(token, "wrong", partition="another")
    assert not await v.feedback(EntryIds("x").issue("part", "b" * 64, stored.created_at), "wrong")
    assert await v.feedback(token, "right")
    assert await v.cache.entry("b" * 64) is not None
    assert await v.feedback(token, "wrong", partition="part")
    assert await v.cache.entry("b" * 64) is None
    assert not await v.feedback(token, "wrong")  # gone
    assert v.stats()["feedback"] == {"right": 1, "wrong": 1}


def test_the_verification_section() -> None:
    settings = parse_config(
        {"semantic_cache": {"verification": {"sample_rate": 0.02, "upstream_url": "http://vllm:8000"}}},
        env={},
    )
    assert settings.verification.sample_rate == 0.02 and settings.verification.active
    assert not parse_config({"semantic_cache": {}}, env={}).verification.active
    with pytest.raises(ConfigError, match="upstream_url: required"):
        parse_config({"semantic_cache": {"verification": {"sample_rate": 0.5}}}, env={})
    with pytest.raises(ConfigError, match="max_false_hit_rate"):
        parse_config({"semantic_cache": {"verification": {"max_false_hit_rate": 0.7}}}, env={})
    with pytest.raises(ConfigError, match="did you mean `sample_rate`"):
        parse_config({"semantic_cache": {"verification": {"sample_rat": 0.5}}}, env={})
    secret = parse_config({"semantic_cache": {}}, env={ENTRY_SECRET_ENV: "s"}).verification.entry_secret
    assert secret == "s"


def test_the_curve_lends_a_group_its_neighbours_evidence() -> None:
    """A group alone needs hundreds of outcomes for a bound of a few percent; its neighbours,
    read through one curve of P(wrong) over confidence and similarity, lend it theirs."""
    alone, pooled = Outcomes(prior_strength=10), Outcomes(prior_strength=10)
    for outcomes in (alone, pooled):
        for i in range(30):  # the group asked about: 30 right, not enough on its own
            outcomes.learn("m", f"g{i}", 0.975, wrong=False, similarity=0.96)
    for score, similarity in ((0.95, 0.96), (0.985, 0.96), (0.975, 0.985), (0.995, 0.99)):
        for i in range(300):  # its neighbours: ~1 % wrong
            pooled.learn("m", f"n{score}{similarity}{i}", score, wrong=i % 100 == 0, similarity=similarity)
    assert alone.upper("m", 0.975, "", 0.96) > 0.05
    assert pooled.upper("m", 0.975, "", 0.96) <= 0.05
    assert pooled.upper("m", 0.975, "", 0.96) == pooled.upper("m", 0.975, "", 0.96)  # cached, same


def test_a_group_whose_own_outcomes_contradict_the_curve_is_held_to_them() -> None:
    outcomes = Outcomes(prior_strength=10)
    for score, similarity in ((0.95, 0.96), (0.985, 0.96), (0.975, 0.985), (0.995, 0.99)):
        for i in range(300):
            outcomes.learn("m", f"n{score}{similarity}{i}", score, wrong=False, similarity=similarity)
    assert outcomes.upper("m", 0.975, "", 0.96) <= 0.05  # the curve alone would serve it …
    for i in range(20):  # … but this group is wrong half the time
        outcomes.learn("m", f"bad{i}", 0.975, wrong=i % 2 == 0, similarity=0.96)
    assert outcomes.upper("m", 0.975, "", 0.96) > 0.2


def test_the_curve_without_evidence_is_the_calibration_and_serves_nothing() -> None:
    from extproc.dataplane.verification.bound import fit

    curve = fit([], strength=10)
    assert list(curve.beta) == [0.0, 1.0, 0.0]  # P(wrong) = 1 - confidence
    assert curve.upper(0.9975, 0.995, 2.326) > 0.5  # but far too uncertain to serve
    assert fit([], strength=0).upper(0.9975, 0.995, 2.326) > 0.99  # no prior: nothing known


def test_the_curve_fit_reaches_the_maximum_on_a_few_outcomes() -> None:
    """Plain Newton steps flipped between two far-off curves on these 21 outcomes (two wrong,
    both at confidence 0.995+) and certified P(wrong) 1e-11 at confidence 0.6: served at δ 0.01."""
    from extproc.dataplane.verification.bound import fit
    from extproc.dataplane.verification.outcomes import bin_mid, similarity_mid

    rows = [(2, 2, 0, 1), (4, 0, 0, 1), (4, 1, 0, 2), (7, 1, 0, 1), (8, 0, 0, 1), (8, 1, 0, 1)]
    rows += [(9, 4, 0, 1), (10, 0, 2, 7), (10, 1, 0, 2), (10, 2, 0, 1), (10, 3, 0, 1)]
    groups = [(bin_mid(c), similarity_mid(s), float(w), float(r)) for c, s, w, r in rows]
    curve = fit(groups, strength=10)
    assert np.allclose(curve.beta, [-0.40, 0.38, -0.77], atol=0.01)  # the posterior's maximum
    assert curve.upper(0.6, 0.85, 2.326) > 0.5
    outcomes = Outcomes()
    outcomes.adopt([[["m", c, s, float(w), float(r)] for c, s, w, r in rows]])
    assert outcomes.upper("m", 0.6, "", 0.85) > 0.5
