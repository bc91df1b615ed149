"""Connecting to Milvus: what is logged at once, and a host DNS does not know fails at once."""

from __future__ import annotations

import logging

import pytest

from extproc.cache.backends.milvus.client import open_client
from extproc.config.milvus import parse_milvus_config


def test_unknown_host_fails_at_once_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    # timeout 60: without the DNS check pymilvus would wait all of it before failing.
    settings = parse_milvus_config({"connection": {"host": "no-such-host.invalid", "timeout": 60}}, "m.yaml")
    caplog.set_level(logging.INFO)
    with pytest.raises(ConnectionError, match=r"cannot resolve Milvus host 'no-such-host\.invalid'"):
        open_client(settings)
    assert "connecting to Milvus at no-such-host.invalid:19530" in caplog.text
    assert "Milvus connection attempt to no-such-host.invalid:19530 failed: cannot resolve" in caplog.text


def test_uri_host_is_resolved_too() -> None:
    settings = parse_milvus_config({"connection": {"uri": "https://no-such-host.invalid:443"}}, "m.yaml")
    with pytest.raises(ConnectionError, match=r"no-such-host\.invalid"):
        open_client(settings)
