"""Tenant scopes from raw header bytes, credentials that are no credentials, header limits."""

from __future__ import annotations

from envoy_data_plane.envoy.config.core.v3 import HeaderMap, HeaderValue

from extproc.protocol import messages as m
from extproc.protocol.openai import scope_from_authorization, scope_from_header


def raw_headers(*pairs: tuple[str, bytes]) -> dict[str, str]:
    """Headers as the processor sees them, values given as raw bytes (Envoy's raw_value)."""
    return m.header_dict(HeaderMap(headers=[HeaderValue(key=k, raw_value=v) for k, v in pairs]))


def test_non_utf8_header_values_stay_distinct() -> None:
    a = raw_headers(("x-tenant-id", b"t\xff"))["x-tenant-id"]
    b = raw_headers(("x-tenant-id", b"t\xfe"))["x-tenant-id"]
    assert a != b
    assert scope_from_header(a, 256) != scope_from_header(b, 256)
    # Latin-1 names that UTF-8 decoding with replacement would fold into one
    muller = scope_from_header(raw_headers(("x", b"M\xfcller"))["x"], 256)
    maller = scope_from_header(raw_headers(("x", b"M\xe4ller"))["x"], 256)
    assert muller != maller
    assert muller == "header-bytes:" + b"M\xfcller".hex()
    # valid text keeps its readable scope; the byte form cannot be spelled by a valid value
    assert scope_from_header("acme", 256) == "header:acme"
    assert scope_from_header(b"header-bytes:4d".decode(), 256) == "header:header-bytes:4d"


def test_non_utf8_tokens_are_different_tenants() -> None:
    k1 = raw_headers(("authorization", b"Bearer k\xff"))["authorization"]
    k2 = raw_headers(("authorization", b"Bearer k\xfe"))["authorization"]
    assert scope_from_authorization(k1) != scope_from_authorization(k2)
    assert scope_from_authorization(k1) is not None


def test_missing_blank_or_too_long_header_is_no_scope() -> None:
    assert scope_from_header("", 256) is None
    assert scope_from_header("   ", 256) is None
    assert scope_from_header("x" * 257, 256) is None


def test_empty_bearer_token_is_no_scope() -> None:
    for value in (None, "", "Bearer", "Bearer ", "bearer   ", "  ", "Basic", "Token"):
        assert scope_from_authorization(value) is None, value


def test_bare_token_is_the_bearer_tenant() -> None:
    assert scope_from_authorization("sk-123") == scope_from_authorization("Bearer sk-123")
    assert scope_from_authorization("bearer  sk-123 ") == scope_from_authorization("Bearer sk-123")
    assert scope_from_authorization("Basic sk-123") != scope_from_authorization("Bearer sk-123")
    assert scope_from_authorization("Bearer a") != scope_from_authorization("Bearer b")


def test_header_limits() -> None:
    few = m.header_size(HeaderMap(headers=[HeaderValue(key="a", raw_value=b"b")]))
    assert few == (1, 2)
    assert not m.near_header_limits(few, {"x-semantic-cache": "miss"})
    assert m.near_header_limits((97, 500), {"x-semantic-cache": "miss"})
    assert m.near_header_limits((10, 60 * 1024 - 200), {"x-semantic-cache": "miss"})


def test_unicode_spaces_are_part_of_a_tenant_name() -> None:
    """HTTP trims only spaces and tabs; Python's strip() also took NBSP, U+3000…, so a tenant
    named "acme" + NBSP read acme's answers."""
    acme = scope_from_header("acme", 256)
    assert scope_from_header(" acme\t", 256) == acme
    for other in ("acme\u00a0", "\u3000acme", "acme\u2003", "acme\u0085"):
        assert scope_from_header(other, 256) != acme, repr(other)
    token = scope_from_authorization("Bearer sk-1")
    assert scope_from_authorization("Bearer\tsk-1 ") == token
    assert scope_from_authorization("Bearer sk-1\u00a0") != token
    assert scope_from_authorization("Bearer \u3000sk-1") != token
