"""``semantic-cache admin``: the token as a Secret file holds it, and local mistakes as one-line errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from extproc.cli.main import main
from tests.support.json_handler import JsonHandler

UNREACHABLE = "http://127.0.0.1:1"
"""Nothing listens there: a command that fails before any request never notices."""


@pytest.fixture
def stats_server() -> Iterator[tuple[str, list[str]]]:
    """An HTTP server answering every GET with ``{}``; yields its URL and the Authorization headers seen."""
    seen: list[str] = []

    class Handler(JsonHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("authorization", ""))
            self.send_json({})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_token_with_a_trailing_newline_is_sent_stripped(
    stats_server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, seen = stats_server
    monkeypatch.setenv("SEMANTIC_CACHE_ADMIN_TOKEN", "s3cret\n")  # a Secret made from `echo s3cret > f`
    assert main(["admin", "stats", "--url", url]) == 0
    assert main(["admin", "stats", "--url", url, "--token", "  s3cret \r\n"]) == 0
    assert seen == ["Bearer s3cret", "Bearer s3cret"]


@pytest.mark.parametrize("token", ["s3c\nret", "s3c\x00ret"])
def test_a_multiline_token_is_refused_without_echoing_it(
    token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["admin", "stats", "--url", UNREACHABLE, "--token", token]) == 1
    err = capsys.readouterr().err
    assert err.startswith("semantic-cache admin: the admin token") and "Traceback" not in err
    assert "s3c" not in err


def test_a_blank_token_is_no_token_and_a_non_ascii_one_goes_as_utf8(
    stats_server: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The processor takes a whitespace-only token as none, and reads headers as UTF-8: the CLI
    refused the first and sent "ä" as Latin-1 (a 401 where curl got a 200)."""
    url, seen = stats_server
    monkeypatch.setenv("SEMANTIC_CACHE_ADMIN_TOKEN", "   ")
    assert main(["admin", "stats", "--url", url]) == 0
    assert main(["admin", "stats", "--url", url, "--token", "s3cret-pässwört"]) == 0
    # http.server reads headers as Latin-1: these are the UTF-8 bytes.
    assert seen == ["", "Bearer " + "s3cret-pässwört".encode().decode("latin-1")]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["export", "-o", "/nonexistent/dir/x.jsonl"], "cannot write /nonexistent/dir/x.jsonl.partial"),
        (["import", "/nonexistent/file.jsonl"], "cannot read /nonexistent/file.jsonl: No such file"),
        (["import", "{tmp}"], "cannot read {tmp}: Is a directory"),
    ],
)
def test_local_file_mistakes_are_one_line_errors(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(["admin", *argv, "--url", UNREACHABLE]) == 1
    err = capsys.readouterr().err
    assert err.startswith("semantic-cache admin: " + expected.replace("{tmp}", str(tmp_path)))
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_export_that_cannot_reach_the_server_leaves_no_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "x.jsonl"
    assert main(["admin", "export", "-o", str(target), "--url", UNREACHABLE]) == 1
    assert "cannot reach the admin API" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "http://127.0.0.1:port"])
def test_a_bad_port_in_the_url_is_a_clear_error(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["admin", "stats", "--url", url]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"semantic-cache admin: --url '{url}': ") and "http://127.0.0.1:9191" in err


@pytest.mark.parametrize(
    ("address", "url"),
    [
        ("0.0.0.0:9191", "http://127.0.0.1:9191"),
        (":::9191", "http://[::1]:9191"),  # the chart's IPv6 form: the listener takes IPv6 only
        ("[::]:9191", "http://[::1]:9191"),
        ("10.0.0.7:9191", "http://10.0.0.7:9191"),
    ],
)
def test_the_default_url_reaches_the_local_admin_api(
    address: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from extproc.cli.admin import ADDRESS_ENV, default_url

    monkeypatch.setenv(ADDRESS_ENV, address)
    assert default_url() == url
