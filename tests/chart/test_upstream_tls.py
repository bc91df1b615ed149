"""An https upstream: the rendered Envoy config, run by the real Envoy against real TLS servers.

The chart is rendered for loopback ports and started as is (the CA path of upstream.tls.ca is
pointed at a CA made here with the openssl command line). Envoy must refuse a self-signed
certificate, a certificate of our CA for another name, and accept one of the CA it was given; the
Host the upstream sees is upstream.url's, not the client's. No processor runs: ext_proc is off on
the path used (GET /v1/models).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from extproc.cli.envoy import envoy_command
from tests.support.json_handler import JsonHandler

from .helpers import RELEASE, Doc, Rendered, envoy_config, envoy_validate, render, validate_object

OPENSSL = shutil.which("openssl")
SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")
CA_DIR = "/etc/semantic-cache/upstream-ca"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (closed again before Envoy binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def openssl(*args: str, cwd: Path) -> None:
    if OPENSSL is None:
        pytest.skip("the openssl command line is not installed (Debian: apt-get install openssl)")
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.crt; good.* (by the CA, for localhost); wrong-name.* (by the CA, for another name);
    self-signed.* (for localhost, by nobody)."""
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
        cwd=d,
    )  # fmt: skip
    for name, san in (("good", "DNS:localhost"), ("wrong-name", "DNS:llm.example.com")):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=server", cwd=d)
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
            cwd=d,
        )  # fmt: skip
    openssl(
        "req", "-x509", *ec, "-keyout", "self-signed.key", "-out", "self-signed.crt", "-days", "2",
        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
        cwd=d,
    )  # fmt: skip
    return d


class EchoHost(JsonHandler):
    """Answers every GET with the Host header it received."""

    def do_GET(self) -> None:
        self.send_json({"host": self.headers.get("host")})


@contextlib.contextmanager
def tls_server(pki: Path, cert: str) -> Iterator[int]:
    """An HTTPS server on 127.0.0.1 presenting ``cert``; yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHost)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def loopback_values(upstream_port: int, tls: Doc) -> tuple[Doc, int, int]:
    """Values that put the pod's Envoy on free loopback ports in front of https://localhost:PORT."""
    port, admin = free_port(), free_port()
    values: Doc = {
        "upstream": {"url": f"https://localhost:{upstream_port}", "tls": tls},
        "envoy": {"listenAddress": "127.0.0.1", "port": port, "adminPort": admin},
        "processor": {"grpcPort": free_port()},  # nothing listens: failure_mode_allow
    }
    return values, port, admin


@contextlib.contextmanager
def running_envoy(text: str, tmp: Path, admin: int) -> Iterator[None]:
    config = tmp / f"envoy-{admin}.yaml"
    config.write_text(text)
    log = tmp / f"envoy-{admin}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(envoy_command(config, "info"), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("Envoy did not start:\n" + log.read_text()[-3000:])
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def get(port: int) -> tuple[int, bytes]:
    """GET /v1/models through Envoy, as a client addressing the Service would (its own Host)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/models", headers={"Host": f"{RELEASE}.example.svc:8801"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def chart_envoy(chart: Path, values: Doc, ca_file: Path | None = None) -> str:
    """The chart's envoy.yaml for ``values``; the mounted CA path replaced by ``ca_file``."""
    text = render(chart, values).data(f"{RELEASE}-envoy", "envoy.yaml")
    if ca_file is not None:
        assert f"{CA_DIR}/ca.crt" in text
        text = text.replace(f"{CA_DIR}/ca.crt", str(ca_file))
    # Envoy's resolver answers ::1 for localhost, and the test server binds 127.0.0.1 only.
    config = yaml.safe_load(text)
    (upstream,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "upstream"]
    upstream["dns_lookup_family"] = "V4_ONLY"
    return yaml.safe_dump(config, sort_keys=False)


NO_CA: Doc = {"ca": {"secretName": "", "configMapName": "", "key": "ca.crt"}, "insecureSkipVerify": False}
OUR_CA: Doc = {"ca": {"secretName": "", "configMapName": "llm-ca", "key": "ca.crt"}}


def ssl_stats(admin: int) -> dict[str, int]:
    """The upstream cluster's TLS counters (ssl.handshake, ssl.fail_verify_error, ...)."""
    url = f"http://127.0.0.1:{admin}/stats?filter=^cluster%5C.upstream%5C.ssl%5C."
    with urllib.request.urlopen(url, timeout=5) as r:
        lines = r.read().decode().splitlines()
    prefix = "cluster.upstream."
    return {
        k.removeprefix(prefix): int(v) for k, _, v in (line.partition(": ") for line in lines) if v.isdigit()
    }


@pytest.mark.parametrize(
    ("cert", "tls", "status", "counter"),
    [
        ("self-signed", NO_CA, 503, "ssl.fail_verify_error"),  # the system bundle does not trust it
        ("self-signed", OUR_CA, 503, "ssl.fail_verify_error"),  # nor does our CA
        ("wrong-name", OUR_CA, 503, "ssl.fail_verify_san"),  # our CA, but for another host
        ("good", OUR_CA, 200, "ssl.handshake"),
        ("self-signed", {"insecureSkipVerify": True}, 200, "ssl.handshake"),  # the dangerous opt-out
    ],
    ids=["self-signed-system-ca", "self-signed-our-ca", "wrong-name", "our-ca", "insecure-skip-verify"],
)
def test_real_envoy_verifies_the_upstream_certificate(
    chart: Path, pki: Path, tmp_path: Path, cert: str, tls: Doc, status: int, counter: str
) -> None:
    if tls is NO_CA and not SYSTEM_CA.is_file():
        pytest.skip(f"{SYSTEM_CA} (the system CA bundle the chart defaults to) is not on this machine")
    with tls_server(pki, cert) as upstream_port:
        values, port, admin = loopback_values(upstream_port, tls)
        custom_ca = tls is OUR_CA
        text = chart_envoy(chart, values, pki / "ca.crt" if custom_ca else None)
        with running_envoy(text, tmp_path, admin):
            code, body = get(port)
            stats = ssl_stats(admin)
    assert code == status, body
    # Refused by the certificate check (not for another reason), or accepted after a handshake.
    assert stats[counter] >= 1, stats
    if status == 200:
        # The upstream saw upstream.url's authority, not the Service name the client used.
        assert json.loads(body) == {"host": f"localhost:{upstream_port}"}


def test_tls_values_render_the_mount_and_the_validation_context(chart: Path, tmp_path: Path) -> None:
    default = render(chart, {"upstream": {"url": "https://llm.example.com"}})
    socket = envoy_config(default)["static_resources"]["clusters"][1]["transport_socket"]["typed_config"]
    assert socket["sni"] == "llm.example.com"
    assert socket["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": str(SYSTEM_CA)},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "llm.example.com"}}],
    }
    assert "upstream-ca" not in yaml.safe_dump(default.pod)
    for source in ("secretName", "configMapName"):
        r = render(
            chart,
            {
                "upstream": {
                    "url": "https://10.0.0.7:8443",
                    "tls": {"ca": {source: "llm-ca", "key": "bundle.pem"}},
                }
            },
        )
        for doc in r.docs:
            validate_object(doc)
        context = envoy_config(r)["static_resources"]["clusters"][1]["transport_socket"]["typed_config"]
        validation = context["common_tls_context"]["validation_context"]
        assert validation["trusted_ca"] == {"filename": f"{CA_DIR}/bundle.pem"}
        assert validation["match_typed_subject_alt_names"][0]["san_type"] == "IP_ADDRESS"
        (volume,) = [v for v in r.pod["spec"]["volumes"] if v["name"] == "upstream-ca"]
        kind = "secret" if source == "secretName" else "configMap"
        assert volume[kind]["items"] == [{"key": "bundle.pem", "path": "bundle.pem"}]
        assert volume[kind].get("secretName", volume[kind].get("name")) == "llm-ca"
        mounts = {m["name"]: m["mountPath"] for m in r.container("envoy")["volumeMounts"]}
        assert mounts["upstream-ca"] == CA_DIR
        # The processor's shadow requests (verification) trust the same CA.
        assert {m["name"]: m["mountPath"] for m in r.container("processor")["volumeMounts"]}[
            "upstream-ca"
        ] == CA_DIR
        settings = yaml.safe_load(r.data("semantic-router-config", "config.yaml"))["semantic_cache"]
        assert settings["verification"]["ca_file"] == f"{CA_DIR}/bundle.pem"
        routes = envoy_config(r)["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        for route in routes["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]:
            if route["match"] != {"path": "/healthz"}:
                assert route["route"]["host_rewrite_literal"] == "10.0.0.7:8443"
    insecure = render(
        chart, {"upstream": {"url": "https://llm.example.com", "tls": {"insecureSkipVerify": True}}}
    )
    typed = envoy_config(insecure)["static_resources"]["clusters"][1]["transport_socket"]["typed_config"]
    assert "common_tls_context" not in typed
    result = envoy_validate(insecure.data(f"{RELEASE}-envoy", "envoy.yaml"), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"ca": {"secretName": "a", "configMapName": "b"}}, "not both"),
        ({"ca": {"secretName": "a"}, "insecureSkipVerify": True}, "would be ignored"),
    ],
)
def test_contradicting_tls_values_fail_the_render(chart: Path, tls: Doc, message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(chart, {"upstream": {"url": "https://llm.example.com", "tls": tls}})


def test_plain_http_upstream_gets_its_host_and_no_tls(chart: Path) -> None:
    r: Rendered = render(chart, {})
    cluster = envoy_config(r)["static_resources"]["clusters"][1]
    assert "transport_socket" not in cluster
    listener = envoy_config(r)["static_resources"]["listeners"][0]
    routes = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]
    assert {r["route"].get("host_rewrite_literal") for r in routes["routes"]} == {"vllm:8000", None}
