"""Bounded gzip (never inflates past the limit, whatever the ratio) and which bodies are JSON."""

from __future__ import annotations

import gzip
import resource
import zlib

import pytest

from extproc.protocol.encoding import gunzip_bounded, json_media_type


def test_round_trip_and_members() -> None:
    data = b"hello world " * 1000
    assert gunzip_bounded(gzip.compress(data), 10**6) == data
    assert gunzip_bounded(gzip.compress(data) + gzip.compress(b"!"), 10**6) == data + b"!"
    assert gunzip_bounded(gzip.compress(b""), 10) == b""
    assert gunzip_bounded(gzip.compress(data) + b"\x00\x00", 10**6) == data


def test_exactly_at_and_over_the_limit() -> None:
    data = bytes(range(256)) * 40
    assert gunzip_bounded(gzip.compress(data), len(data)) == data
    assert gunzip_bounded(gzip.compress(data), len(data) - 1) is None


def test_bomb_stops_at_the_limit_without_inflating() -> None:
    bomb = gzip.compress(b"\x00" * (512 * 2**20), compresslevel=9)  # 512 MiB in ~0.5 MiB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert gunzip_bounded(bomb, 2**20) is None
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64  # a few MiB of buffers, never the 512 MiB the bomb expands to


@pytest.mark.parametrize("bad", [b"not gzip at all", gzip.compress(b"x" * 5000)[:-12]])
def test_corrupt_or_truncated(bad: bytes) -> None:
    with pytest.raises((zlib.error, EOFError)):
        gunzip_bounded(bad, 10**6)


def test_json_media_types() -> None:
    for json_type in ("", "application/json", "Application/JSON; charset=utf-8", "application/vnd.api+json"):
        assert json_media_type(json_type), json_type
    for other in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/json",
    ):
        assert not json_media_type(other), other
