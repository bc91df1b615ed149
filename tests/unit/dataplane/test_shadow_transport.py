"""How a shadow request travels: TLS to an https upstream, and the headers it does not repeat.

A private CA made with the openssl command line signs the upstream's certificate; the shadow
client must refuse it without ``ca_file`` (result "error", the entry untouched), accept it with
it, and accept anything only when ``insecure_skip_verify`` says so.
"""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from extproc.config.settings import parse_config
from extproc.dataplane.verification import shadow
from extproc.errors import ConfigError
from tests.support.certs import make_certs
from tests.support.shadow import P_KEY, Harness, P, serve_upstream

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command line")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """ca.crt, and server.crt / server.key for 127.0.0.1 signed by it."""
    return make_certs(tmp_path_factory.mktemp("pki"))


def server_tls(pki: dict[str, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["server.crt"], pki["server.key"])
    return context


@pytest.mark.parametrize(
    "settings, verdict",
    [({}, "error"), ({"ca_file": "CA"}, "agree"), ({"insecure_skip_verify": True}, "agree")],
)
async def test_an_https_upstream_of_a_private_ca(
    pki: dict[str, Path], settings: dict[str, object], verdict: str
) -> None:
    if settings.get("ca_file") == "CA":
        settings = {"ca_file": str(pki["ca.crt"])}
    async with serve_upstream(server_tls(pki)) as (state, url):
        h = Harness(url, **settings)
        hit = await h.store(P, "v:1,0,0")
        state.text = "v:1,0,0"
        assert h.v.shadow(h.shadow(hit))
        await h.drain()
        await h.v.close()
    counts = h.v.stats()["models"]["m"]
    assert counts[verdict] == 1 and counts["verified"] == (verdict != "error")
    assert len(state.bodies) == (verdict != "error")  # refused at the handshake: never sent
    assert await h.cache.entry(P_KEY) is not None  # an error judges nothing


def test_the_ca_file_is_checked_at_start(pki: dict[str, Path], tmp_path: Path) -> None:
    def check(**section: object) -> None:
        parse_config({"semantic_cache": {"verification": section}}, env={})

    check(ca_file=str(pki["ca.crt"]))
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("not a certificate\n")
    for section, message in [
        ({"ca_file": str(tmp_path / "missing.crt")}, "does not exist"),
        ({"ca_file": str(not_pem)}, "no usable PEM certificate"),
        ({"ca_file": str(pki["ca.crt"]), "insecure_skip_verify": True}, "keep one of the two"),
    ]:
        with pytest.raises(ConfigError, match=message):
            check(**section)


@pytest.mark.parametrize("traced", [True, False])
async def test_a_shadow_is_its_own_request_in_the_clients_trace(
    traced: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client's request id and trace headers are not repeated: the upstream sees the
    verification span's trace context (a child of the client's trace) when tracing is on, no
    trace context when it is off; other headers as sent."""
    if traced:
        monkeypatch.setattr(shadow, "tracer", TracerProvider().get_tracer("test"))
    parent = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    client = {
        "authorization": "Bearer k",
        "x-request-id": "client-request-1",
        "traceparent": f"00-{0x1234:032x}-{0x5678:016x}-01",
        "tracestate": "vendor=client",
        "x-b3-traceid": "abc",
    }
    async with serve_upstream() as (state, url):
        h = Harness(url)
        hit = await h.store(P, "v:1,0,0")
        job = h.shadow(hit, headers=client)
        job.context = trace.set_span_in_context(NonRecordingSpan(parent))
        assert h.v.shadow(job)
        await h.drain()
        await h.v.close()
    sent = state.headers[0]
    assert sent["authorization"] == "Bearer k" and sent["x-semantic-cache-shadow"] == "1"
    assert "x-request-id" not in sent and "x-b3-traceid" not in sent and "tracestate" not in sent
    if traced:  # the client's trace, the verification span's id
        _, trace_id, span_id, _ = sent["traceparent"].split("-")
        assert trace_id == f"{0x1234:032x}" and span_id != f"{0x5678:016x}"
    else:
        assert "traceparent" not in sent
