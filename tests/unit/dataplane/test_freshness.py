"""Request freshness: cache-control max-age, x-semantic-cache-ttl, volatile limits, and the cache."""

from __future__ import annotations

import pytest

from extproc.dataplane.freshness import Freshness, answer_text, parse_freshness, requested_ttl
from tests.support.toy import answer, make_cache, query


@pytest.mark.parametrize(
    ("header", "no_cache", "no_store", "max_age"),
    [
        ("", False, False, None),
        ("max-age=60", False, False, 60),
        ("max-age=0", True, False, 0),
        ('no-store, max-age="30"', False, True, 30),
        ("max-age=60, max-age=10", False, False, 10),  # the strictest wins
        ("max-age=-1", False, False, None),  # malformed: ignored
        ("max-age=ten, No-Cache", True, False, None),
    ],
)
def test_cache_control(header: str, no_cache: bool, no_store: bool, max_age: int | None) -> None:
    fresh = parse_freshness(header)
    assert (fresh.no_cache, fresh.no_store, fresh.max_age) == (no_cache, no_store, max_age)


@pytest.mark.parametrize(
    ("value", "max_ttl", "ttl"),
    [
        ("600", 86400, 600),
        ("999999", 86400, 86400),
        ("600", 0, None),
        ("0", 86400, None),
        ("1.5", 86400, None),
        ("000", 86400, None),
        (" 30 ", 86400, 30),
        ("10000000000", 86400, 86400),  # more than any limit is the limit, not "no value"
        ("9" * 5000, 86400, 86400),  # past int()'s digit limit: no error
        ("\u0663", 86400, None),  # an Arabic-Indic 3: not an HTTP number
    ],
)
def test_ttl_header_is_clamped(value: str, max_ttl: int, ttl: int | None) -> None:
    assert requested_ttl(value, max_ttl) == ttl


def test_volatile_limits() -> None:
    never = Freshness()
    never.mark_volatile("relative_time", 0, 3600)
    assert never.no_cache and never.no_store and never.volatile == "relative_time"
    short = Freshness(max_age=600, ttl=7200)
    short.mark_volatile("moving_value", 60, 3600)
    assert (short.no_cache, short.no_store, short.max_age, short.ttl) == (False, False, 60, 60)
    forever = Freshness()
    forever.mark_volatile("moving_value", 60, 0)  # ttl_seconds 0 = never expire: still 60 s
    assert forever.ttl == 60


def test_answer_text_reads_every_choice() -> None:
    completion = {"choices": [{"message": {"content": "a"}}, {"text": "b"}, {"message": {"content": None}}]}
    assert answer_text(completion) == "a\nb"


async def test_max_age_skips_older_entries_and_ttl_is_per_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = make_cache(threshold=0.9)
    entry = await cache.store(query("v:1,0"), answer("a"), ttl_seconds=600)
    assert entry.expires_at == pytest.approx(entry.created_at + 600)
    later = entry.created_at + 120  # two minutes after the store
    monkeypatch.setattr("extproc.cache.semantic.time.time", lambda: later)
    assert (await cache.check(query("v:1,0"), max_age=300)).match == "exact"
    old = await cache.check(query("v:1,0"), max_age=60)
    assert old.entry is None and old.rejections == ["max_age"]
    near = await cache.check(query("v:1,0.2"), max_age=60)
    assert near.entry is None and "max_age" in near.rejections
    assert near.rejected_similarity == pytest.approx(0.9806, abs=1e-3)  # "rejected: max_age 0.9806"
    assert (await cache.check(query("v:1,0.2"))).match == "semantic"
    forever = await cache.store(query("v:0,1"), answer("b"), ttl_seconds=0)
    assert forever.expires_at == 0.0 and forever.created_at == later
