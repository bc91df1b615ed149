"""Milvus rows checked in bytes before any call, data errors told from connection failures (no server)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
from pymilvus.exceptions import DataNotMatchException, MilvusException, MilvusUnavailableException, ParamError

from extproc.cache.backends.breaker import CircuitBreaker
from extproc.cache.backends.milvus.bulk import expression
from extproc.cache.backends.milvus.failures import is_data_error
from extproc.cache.backends.milvus.rows import NEVER, decode_response, encode_response, entry_row
from extproc.cache.backends.milvus.schema import varchar_limits
from extproc.cache.schema import CacheEntry, EntryFilter
from extproc.errors import DataRejected, EntryTooLarge
from tests.support.toy import answer


def entry(model: str = "m", scope: str = "global", prompt: str = "p", **changes: object) -> CacheEntry:
    """An entry with hex keys, as the cache makes them."""
    e = CacheEntry(
        id="a" * 64,
        model=model,
        scope=scope,
        fingerprint="f" * 64,
        partition="b" * 64,
        exact_key="a" * 64,
        prompt=prompt,
        response=answer("x"),
        vector=np.ones(4, dtype=np.float32) / 2,
        created_at=1_700_000_000.0,
        expires_at=0.0,
    )
    for k, v in changes.items():
        setattr(e, k, v)
    return e


def test_the_issues_200_emoji_model_is_too_large_in_bytes() -> None:
    model = "\U0001f600" * 200  # 200 characters (under the 256 the request parser allows), 800 bytes
    with pytest.raises(
        EntryTooLarge, match="model is 800 bytes in UTF-8; the collection's model field holds 512"
    ):
        entry_row(entry(model=model), "embedding")
    assert entry_row(entry(model="\U0001f600" * 128), "embedding")["model"] == "\U0001f600" * 128  # 512 bytes
    with pytest.raises(EntryTooLarge, match="scope is 1019 bytes"):
        entry_row(entry(scope="header:" + "é" * 506), "embedding")
    with pytest.raises(EntryTooLarge, match="prompt is 70000 bytes"):
        entry_row(entry(prompt="p" * 70_000), "embedding")


def test_rows_follow_the_collections_own_limits() -> None:
    fields = [
        {"name": "model", "type": "VARCHAR", "params": {"max_length": 16}},
        {"name": "prompt", "type": "VARCHAR", "params": {"max_length": "1000"}},
        {"name": "created_at", "type": "INT64", "params": {}},
    ]
    limits = varchar_limits({"fields": fields})
    assert limits["model"] == 16 and limits["prompt"] == 1000 and limits["scope"] == 512
    with pytest.raises(EntryTooLarge, match="model is 17 bytes"):
        entry_row(entry(model="m" * 17), "embedding", limits)


def test_text_that_is_not_unicode_is_refused_as_data() -> None:
    with pytest.raises(DataRejected, match="model is not valid Unicode text") as info:
        entry_row(entry(model="\ud800"), "embedding")
    assert not isinstance(info.value, EntryTooLarge) and info.value.reason == "data_rejected"
    with pytest.raises(DataRejected, match="prompt is not valid Unicode text"):
        entry_row(entry(prompt="a\udfffb"), "embedding")
    lone = answer("half a pair: \ud83d")  # JSON escapes keep it exact and the text valid UTF-8
    assert decode_response(encode_response(lone)) == lone


def test_row_times_and_vector() -> None:
    row = entry_row(entry(expires_at=1_700_000_360.0), "vec")
    assert row["created_at"] == 1_700_000_000_000 and row["expires_at"] == 1_700_000_360_000
    assert row["vec"] == [0.5, 0.5, 0.5, 0.5]
    assert entry_row(entry(), "vec")["expires_at"] == NEVER
    with pytest.raises(DataRejected, match="not a time Milvus can store"):
        entry_row(entry(created_at=1e20), "vec")


def test_selector_expressions_refuse_what_milvus_cannot_parse() -> None:
    assert expression(EntryFilter(model='we\\ird "m"')) == 'model == "we\\\\ird \\"m\\""'
    with pytest.raises(DataRejected, match="model is not valid Unicode text"):
        expression(EntryFilter(model="\ud800"))
    with pytest.raises(DataRejected, match=r"created_before -9\.99.*e\+19 is not a time"):
        expression(EntryFilter(created_before=time.time() - 1e20))
    with pytest.raises(DataRejected):
        expression(EntryFilter(created_before=float("nan")))


class _RpcError(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


def wrapped(inner: BaseException) -> MilvusException:
    """How pymilvus' error handler wraps a non-Milvus exception."""
    try:
        try:
            raise inner
        except Exception as exc:
            raise MilvusException(message=f"Unexpected error, message=<{exc}>") from exc
    except MilvusException as outer:
        return outer


@pytest.mark.parametrize(
    "exc",
    [
        # Milvus 2.3.5's answers, as measured against the real server:
        MilvusException(1100, "the length (800) of 0th string exceeds max length (512): invalid parameter"),
        MilvusException(65535, "cannot parse expression: created_at < -99999999999999991611392"),
        MilvusException(65535, "failed to create expr plan, expr = created_at < -99999999999999991611392"),
        DataNotMatchException(message="{model} field should be a varchar ... surrogates not allowed"),
        ParamError(message="invalid timeout"),
        wrapped(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")),
    ],
)
def test_data_errors(exc: BaseException) -> None:
    assert is_data_error(exc)


@pytest.mark.parametrize(
    "exc",
    [
        TimeoutError(),
        ConnectionRefusedError(),
        _RpcError(),
        MilvusUnavailableException(message="server unavailable"),
        MilvusException(2, "service unavailable: node not healthy"),
        MilvusException(65535, "[insert_rows] Retry run out of 1 retry times, message=failed to connect"),
        wrapped(OSError("connection reset")),
    ],
)
def test_connection_failures(exc: BaseException) -> None:
    assert not is_data_error(exc)


def test_a_released_call_neither_opens_nor_blocks_the_breaker() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_after=0.0)
    for _ in range(100):  # one tenant's bad data, call after call
        assert breaker.allow()
        breaker.release()
    assert breaker.state == "closed" and breaker.opened == 0
    for _ in range(3):
        breaker.failure()
    assert breaker.state == "open"
    assert breaker.allow() and breaker.state == "half_open"  # the probe
    breaker.release()  # the probe's data was refused: no verdict, the next call probes
    assert breaker.allow()
    breaker.success()
    assert breaker.state == "closed"
