"""The bound's evidence shared through a backend: replicas add up, restarts keep it, nothing twice."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
import pytest

from extproc.cache import MemoryBackend, SemanticCache
from extproc.cache.schema import CacheEntry
from extproc.config.settings import parse_config
from extproc.config.verification import VerificationSettings
from extproc.dataplane.policy import request_settings
from extproc.dataplane.verification import Verification
from extproc.dataplane.verification.evidence import FORMAT, VERSION, owner_name
from extproc.embedding.batcher import Embedder
from extproc.errors import ConfigError
from tests.support.toy import DIM, toy_encode

DELTA = 0.02


def replica(backend: MemoryBackend, **settings: Any) -> Verification:
    """One process's verification over ``backend`` (a backend shared by every replica)."""
    cache = SemanticCache(backend, Embedder(toy_encode, DIM), 0.9, 5, 60)
    values = VerificationSettings(**({"max_false_hit_rate": DELTA} | settings))
    return Verification(lambda: values, cache, lambda coro: coro.close())


def learn(v: Verification, n: int, wrong: bool = False, score: float = 0.995) -> None:
    """``n`` verified outcomes of candidates at ``score``."""
    for i in range(n):
        v.outcomes.learn("m", f"{v.evidence.owner}-{i}", score, wrong, 0.99)


def serves(v: Verification, score: float = 0.995) -> bool:
    """Whether the δ rule serves a fresh candidate at ``score``."""
    return v.outcomes.upper("m", score, "", 0.99) <= DELTA


async def test_replicas_count_each_others_outcomes_once() -> None:
    backend = MemoryBackend(DIM, 100)
    a, b = replica(backend), replica(backend)
    learn(a, 150)
    learn(b, 150)
    assert not serves(a) and not serves(b)  # 150 each is not enough evidence …
    assert await a.evidence.sync() and await b.evidence.sync() and await a.evidence.sync()
    assert serves(a) and serves(b)  # … 300 together is
    for _ in range(3):  # reading again and again adds nothing
        assert await a.evidence.sync() and await b.evidence.sync()
    assert a.outcomes.shared == b.outcomes.bins and b.outcomes.shared == a.outcomes.bins
    assert a.stats()["evidence"] | {"problem": ""} == {
        "shared": True,
        "other_processes": 1,
        "shared_outcomes": 150,
        "own_outcomes": 150,
        "changes": 0,
        "problem": "",
    }
    learn(b, 40, wrong=True)  # mistakes seen by one replica stop both from serving …
    assert await b.evidence.sync() and await a.evidence.sync()
    assert serves(a)  # … once written: at most once a minute (WRITE_SECONDS)
    later = time.time() + 61
    assert await b.evidence.sync(later) and await a.evidence.sync(later)
    assert not serves(a) and not serves(b)
    # Each saw the group change (b in its own outcomes, a in what it adopted from b).
    assert b.stats()["evidence"]["changes"] == 1 and a.stats()["evidence"]["changes"] == 1


async def test_a_restarted_process_keeps_what_the_one_before_learned() -> None:
    backend = MemoryBackend(DIM, 100)
    first = replica(backend)
    learn(first, 300)
    assert serves(first)
    await first.close()  # the last outcomes are written on the way out
    second = replica(backend)
    assert second.evidence.owner != first.evidence.owner and not serves(second)
    assert await second.evidence.sync()
    assert serves(second) and second.stats()["evidence"]["other_processes"] == 1


async def test_evidence_of_another_calibration_or_format_is_not_read() -> None:
    backend = MemoryBackend(DIM, 100)
    now = time.time()
    rows = [["m", 10, 4, 0.0, 5000.0]]
    for owner, document in {
        "other-verifier": {"format": FORMAT, "version": VERSION, "calibration": "verifier-x", "bins": rows},
        "future": {"format": FORMAT, "version": VERSION + 1, "calibration": "cosine", "bins": rows},
        "garbage": "not json",
    }.items():
        await backend.save_evidence(owner, json.dumps(document), now)
    v = replica(backend)
    assert await v.evidence.sync()
    assert v.outcomes.shared == {} and not serves(v)
    header = {"format": FORMAT, "version": VERSION, "calibration": "cosine"}
    good = header | {"bins": [*rows, ["m", "x", 1, 1, 1]]}  # the unreadable row alone is skipped
    bad_counts = header | {"bins": [["m", 10, 4, -9, 1]]}
    await backend.save_evidence("good", json.dumps(good), now)
    await backend.save_evidence("bad-counts", json.dumps(bad_counts), now)
    assert await v.evidence.sync()
    assert v.outcomes.shared == {("m", 10, 4): [0.0, 5000.0]} and serves(v)


async def test_evidence_of_a_process_that_stopped_writing_ages_out() -> None:
    backend = MemoryBackend(DIM, 100)
    old = replica(backend)
    learn(old, 300)
    assert await old.evidence.sync(now=time.time() - 31 * 86_400)
    v = replica(backend)  # evidence_max_age_days: 30
    assert await v.evidence.sync() and v.outcomes.shared == {}
    assert await backend.load_evidence(0) == {}  # dropped, not only skipped


async def test_a_process_writes_what_it_learned_once_a_minute_and_hourly_when_idle() -> None:
    backend = MemoryBackend(DIM, 100)
    v = replica(backend)
    assert await v.evidence.sync() and await backend.load_evidence(0) == {}  # nothing learned yet
    learn(v, 5)
    now = time.time()
    assert await v.evidence.sync(now)
    assert await v.evidence.sync(now + 300) and backend._evidence[v.evidence.owner][0] == now  # idle
    learn(v, 1)
    assert await v.evidence.sync(now + 301) and backend._evidence[v.evidence.owner][0] == now + 301
    learn(v, 1)
    assert await v.evidence.sync(now + 330) and backend._evidence[v.evidence.owner][0] == now + 301
    assert await v.evidence.sync(now + 362) and backend._evidence[v.evidence.owner][0] == now + 362
    assert await v.evidence.sync(now + 3962) and backend._evidence[v.evidence.owner][0] == now + 3962
    learn(v, 1)
    await v.close()  # stopping writes what is new at once
    assert json.loads(backend._evidence[v.evidence.owner][1])["bins"][0][4] == 8.0


async def test_sharing_turned_off() -> None:
    backend = MemoryBackend(DIM, 100)
    a, b = replica(backend, share_evidence=False), replica(backend, share_evidence=False)
    learn(a, 300)
    assert not await a.evidence.sync() and not await b.evidence.sync()
    assert not serves(b) and a.stats()["evidence"]["shared"] is False


async def test_a_delta_set_only_by_a_policy_shares_the_evidence_too() -> None:
    """The section is inactive (no sample_rate, no δ): the policy's δ is what uses the evidence."""
    settings = parse_config(
        {"semantic_cache": {"policies": [{"match": {"model": "m"}, "max_false_hit_rate": DELTA}]}}, env={}
    )
    assert not settings.verification.active
    delta = request_settings(settings, "", "m")[0].verification.max_false_hit_rate
    backend = MemoryBackend(DIM, 100)
    a, b = (replica(backend, max_false_hit_rate=0.0) for _ in range(2))
    candidate = CacheEntry("k", "m", "global", "f", "p", "e" * 64, "q", {}, np.zeros(DIM), time.time())
    a.start()
    b.start()
    try:
        learn(a, 300)
        await asyncio.sleep(0.05)
        assert await backend.load_evidence(0) == {}  # nothing uses it yet: nothing synced
        assert a.allows("m", candidate, 0.995, 0.99, delta)
        await until(lambda: bool(backend._evidence))  # the first bounded decision syncs at once
        assert not b.allows("m", candidate, 0.995, 0.99, delta)  # explored: no evidence of its own
        await until(lambda: b.evidence.processes == 1)
        assert b.allows("m", candidate, 0.995, 0.99, delta) and serves(b)
    finally:
        await a.close()
        await b.close()


async def until(check: Any, timeout: float = 5.0) -> None:
    """Wait until ``check()`` is true."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def test_owner_names_are_ascii_and_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "semantic-cache-7d9f/ünïcode pod")
    first, second = owner_name(), owner_name()
    assert first != second and first.isascii() and first.startswith("semantic-cache-7d9f_")


def test_the_settings() -> None:
    v = parse_config({"semantic_cache": {}}, env={}).verification
    assert v.share_evidence and v.evidence_max_age_days == 30
    raw = {"verification": {"share_evidence": False, "evidence_max_age_days": 7}}
    v = parse_config({"semantic_cache": raw}, env={}).verification
    assert not v.share_evidence and v.evidence_max_age_days == 7
    with pytest.raises(ConfigError, match="evidence_max_age_days"):
        parse_config({"semantic_cache": {"verification": {"evidence_max_age_days": 0}}}, env={})
