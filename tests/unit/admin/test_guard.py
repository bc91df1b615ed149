"""The admin API's request guard (Origin, Host, Content-Type) and parameter checks, without a server."""

from __future__ import annotations

import math
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from extproc.admin.guard import RequestGuard, host_name, is_loopback
from extproc.admin.params import MAX_AGE_SECONDS, BadParameter, number, parse_body, parse_selector, text


def request(method: str = "GET", path: str = "/admin/stats", **headers: str) -> web.Request:
    """A request as aiohttp hands it to the middleware (header names with _ for -)."""
    fixed = {k.replace("_", "-"): v for k, v in headers.items()}
    fixed.setdefault("Host", "127.0.0.1:9191")
    return make_mocked_request(method, path, headers=fixed)


def refused(guard: RequestGuard, r: web.Request) -> tuple[int, str]:
    """The guard's (status, message) for a request it must refuse."""
    result = guard.refusal(r)
    assert result is not None, "the request was let through"
    return result


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("127.0.0.1:9191", "127.0.0.1"),
        ("LOCALHOST:18080", "localhost"),
        ("localhost", "localhost"),
        ("[::1]:9191", "::1"),
        ("[::1]", "::1"),
        ("Admin.Example.", "admin.example"),
        ("svc.ns.svc.cluster.local:9191", "svc.ns.svc.cluster.local"),
    ],
)
def test_host_name_drops_the_port(header: str, name: str) -> None:
    assert host_name(header) == name


def test_loopback_names() -> None:
    assert all(is_loopback(h) for h in ("localhost", "127.0.0.1", "127.9.8.7", "::1", "[::1]", "LOCALHOST."))
    assert not any(is_loopback(h) for h in ("10.0.0.1", "localhost.evil.example", "0.0.0.0", "evil.example"))


def test_hosts_a_browser_on_a_rebinding_page_sends_are_refused() -> None:
    guard = RequestGuard("0.0.0.0", allowed_hosts=["semantic-router-admin.ns.svc"])
    for host in ("127.0.0.1:9191", "localhost:54321", "[::1]:1", "10.1.2.3:9191", "[fd00::7]:9191"):
        assert guard.host_allowed(host), host  # loopback (any port: port-forward) and IP addresses
    assert guard.host_allowed("Semantic-Router-Admin.ns.svc:9191")  # a configured name
    assert guard.host_allowed(None)  # no Host: HTTP/1.0 tools; browsers always send one
    for host in ("attacker.example", "attacker.example:9191", "semantic-router-admin.ns.svc.evil", "0.0.0.0"):
        assert not guard.host_allowed(host), host
    assert RequestGuard("admin.internal").host_allowed("admin.internal:9191")  # the listener's own name


def test_the_issues_curl_is_refused_for_its_origin_then_its_content_type() -> None:
    guard = RequestGuard("127.0.0.1")
    evil = request("POST", "/admin/flush", Origin="http://evil.example", Content_Type="text/plain")
    status, message = refused(guard, evil)
    assert status == 403 and "Origin: http://evil.example" in message
    assert "server.admin_allowed_origins" in message
    plain = request("POST", "/admin/flush", Content_Type="text/plain")
    status, message = refused(guard, plain)
    assert status == 415 and "needs Content-Type: application/json (got text/plain)" in message
    status, message = refused(guard, request("POST", "/admin/enabled"))
    assert status == 415 and "(got none)" in message


def test_content_types_per_path_and_method() -> None:
    guard = RequestGuard("127.0.0.1")
    ok = [
        request("POST", "/admin/flush", Content_Type="application/json"),
        request("POST", "/admin/invalidate", Content_Type="application/json; charset=utf-8"),
        request("POST", "/admin/import", Content_Type="application/x-ndjson"),
        request("POST", "/admin/import", Content_Type="application/json"),
        request("GET", "/admin/export"),  # reads need no body type
    ]
    for r in ok:
        assert guard.refusal(r) is None
    form = request("POST", "/admin/import", Content_Type="application/x-www-form-urlencoded")
    assert "application/x-ndjson or application/json" in refused(guard, form)[1]
    assert refused(guard, request("POST", "/admin/flush", Content_Type="application/x-ndjson"))[0] == 415


def test_foreign_host_is_refused_even_for_reads() -> None:
    export = request("GET", "/admin/export", Host="attacker.example:9191")
    status, message = refused(RequestGuard("127.0.0.1"), export)
    assert status == 403 and "Host 'attacker.example:9191' is not a name" in message
    assert "server.admin_allowed_hosts" in message


def test_configured_origins_pass_and_get_cors_headers() -> None:
    guard = RequestGuard("127.0.0.1", allowed_origins=["https://ops.example.com"])
    allowed = request(
        "POST", "/admin/flush", Origin="https://ops.example.com", Content_Type="application/json"
    )
    assert guard.refusal(allowed) is None
    assert guard.cors_headers(allowed)["Access-Control-Allow-Origin"] == "https://ops.example.com"
    other = request("GET", "/admin/stats", Origin="https://ops.example.com.evil.example")
    assert refused(guard, other)[0] == 403 and guard.cors_headers(other) == {}
    assert refused(guard, request("GET", "/admin/stats", Origin="null"))[0] == 403


def test_selector_parameters_are_checked_before_any_backend() -> None:
    now = time.time()
    assert parse_selector({"model": "m", "older_than_seconds": 60}, now).created_before == now - 60
    assert parse_selector({"older_than_seconds": "3600.0"}, now, query=True).created_before == now - 3600
    for data, message in (
        ({"older_than_seconds": 1e20}, f"between 0 and {MAX_AGE_SECONDS}"),
        ({"older_than_seconds": -1}, "older_than_seconds must be a number of seconds between 0"),
        ({"older_than_seconds": math.nan}, "between 0 and"),
        ({"older_than_seconds": math.inf}, "between 0 and"),
        ({"older_than_seconds": "60"}, "older_than_seconds must be a number of seconds"),  # JSON: no text
        ({"older_than_seconds": True}, "must be a number of seconds"),
        ({"model": "\ud800"}, "model must be valid Unicode text"),
        ({"scope": 3}, "scope must be a string"),
        ({"fingerprint": "f" * 5000}, "fingerprint must be at most 4096 characters"),
    ):
        with pytest.raises(BadParameter, match=message.replace("(", r"\(")):
            parse_selector(data, now)
    with pytest.raises(BadParameter, match="must be a number of seconds"):
        parse_selector({"older_than_seconds": "nan"}, now, query=True)
    with pytest.raises(BadParameter, match="between 0 and 1"):
        number("min_similarity", 1.5, 0, 1)


@pytest.mark.parametrize("name", ["model", "scope", "fingerprint"])
@pytest.mark.parametrize("value", ["a\x00b", "a\x01", "\x1f", "tab\there", "new\nline"])
def test_a_selector_with_a_control_character_is_a_400_naming_it(name: str, value: str) -> None:
    # Milvus Lite cannot parse the \u00XX a filter would hold (it opened the circuit breaker).
    with pytest.raises(BadParameter, match=f"{name} must not hold control characters"):
        parse_selector({name: value}, time.time())
    assert parse_selector({name: "a\x7fb"}, time.time())  # DEL is not C0: Milvus parses it
    assert text("prompt", "line one\nline two\tend", 100) == "line one\nline two\tend"  # prompts may


def test_body_parsing_refuses_nan_and_infinity() -> None:
    assert parse_body(b"") == {} and parse_body(b' {"a": 1} ') == {"a": 1}
    for raw in (b'{"older_than_seconds": NaN}', b'{"older_than_seconds": Infinity}', b'{"x": -Infinity}'):
        with pytest.raises(BadParameter, match="is not a JSON number"):
            parse_body(raw)
    for raw in (b"{not json", b"[1, 2]", b"[" * 100_000, b"\xff\xfe"):
        with pytest.raises(BadParameter, match="the body must be a JSON object"):
            parse_body(raw)
