"""The Envoy template: one file, two renderers (Helm and extproc's Python renderer)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import helm_python as helm
import pytest
import yaml

from extproc.cli.envoy import envoy_binary, render_envoy_config
from extproc.errors import ConfigError

from .helpers import CHART, ENVOY_TEMPLATE, RELEASE, Doc, envoy_validate, helm_render, render

CHART_ENVOY_VARS = {
    "UPSTREAM_URL": "http://vllm:8000",
    "ENVOY_LISTEN_ADDRESS": "0.0.0.0",
    "ENVOY_LISTEN_PORT": "8801",
    "ENVOY_ADMIN_ADDRESS": "127.0.0.1",
    "ENVOY_ADMIN_PORT": "9901",
    "EXTPROC_HOST": "127.0.0.1",
    "EXTPROC_PORT": "50051",
    "ENVOY_BUFFER_LIMIT_BYTES": "1048576",
    "UPSTREAM_TIMEOUT": "600s",
    "EXTPROC_MESSAGE_TIMEOUT": "3s",
    "ENVOY_TRACING": "false",
    "ENVOY_TRACING_SAMPLING": "100",
    "ENVOY_SERVICE_NAME": "semantic-cache-envoy",
    "OTEL_COLLECTOR_HOST": "otel-collector.observability.svc.cluster.local",
    "OTEL_COLLECTOR_PORT": "4317",
    "ENVOY_STATS": "true",
    "ENVOY_STATS_ADDRESS": "0.0.0.0",
    "ENVOY_STATS_PORT": "9902",
}


@pytest.mark.parametrize(
    ("values", "variables"),
    [
        ({}, {}),
        (
            {
                "upstream": {"url": "https://LLM.Example.com"},
                "tracing": {
                    "enabled": True,
                    "envoySamplingPercent": 12.5,
                    "collector": {"host": "otel", "port": 4318},
                },
            },
            {
                "UPSTREAM_URL": "https://LLM.Example.com",
                "ENVOY_TRACING": "true",
                "ENVOY_TRACING_SAMPLING": "12.5",
                "OTEL_COLLECTOR_HOST": "otel",
                "OTEL_COLLECTOR_PORT": "4318",
            },
        ),
        (
            {
                "upstream": {"url": "http://10.0.0.7:8080/"},
                "envoy": {
                    "listenAddress": "::",
                    "port": 9000,
                    "adminPort": 9902,
                    "metrics": {"enabled": False, "port": 9902},
                    "bufferLimitBytes": 4194304,
                    "upstreamTimeout": "900s",
                    "extprocMessageTimeout": "500ms",
                    # The chart's own variables win: these cannot move the admin API or processor.
                    "templateVars": {"ENVOY_ADMIN_ADDRESS": "0.0.0.0", "EXTPROC_HOST": "10.0.0.9"},
                },
                "processor": {"grpcPort": 50061},
            },
            {
                "UPSTREAM_URL": "http://10.0.0.7:8080/",
                "ENVOY_LISTEN_ADDRESS": "::",
                "ENVOY_STATS": "false",
                "ENVOY_STATS_ADDRESS": "::",
                "ENVOY_LISTEN_PORT": "9000",
                "ENVOY_ADMIN_PORT": "9902",
                "ENVOY_BUFFER_LIMIT_BYTES": "4194304",
                "UPSTREAM_TIMEOUT": "900s",
                "EXTPROC_MESSAGE_TIMEOUT": "500ms",
                "EXTPROC_PORT": "50061",
            },
        ),
        # Blocks nest (UPSTREAM_TLS_VERIFY inside UPSTREAM_TLS): both renderers drop the inner one
        # alone, and derive the same Host and SAN type.
        (
            {"upstream": {"url": "https://10.0.0.7:8443", "tls": {"ca": {"configMapName": "llm-ca"}}}},
            {
                "UPSTREAM_URL": "https://10.0.0.7:8443",
                "UPSTREAM_CA_FILE": "/etc/semantic-cache/upstream-ca/ca.crt",
            },
        ),
        (
            {"upstream": {"url": "https://llm.example.com:443", "tls": {"insecureSkipVerify": True}}},
            {"UPSTREAM_URL": "https://llm.example.com:443", "UPSTREAM_TLS_VERIFY": "false"},
        ),
    ],
    ids=["defaults", "https-tracing", "custom-ports", "https-private-ca-ip", "https-insecure"],
)
def test_helm_envoy_config_equals_the_python_renderer(
    chart: Path, values: Doc, variables: dict[str, str]
) -> None:
    helm_text = render(chart, values).data(f"{RELEASE}-envoy", "envoy.yaml")
    python_text = render_envoy_config(CHART_ENVOY_VARS | variables, ENVOY_TEMPLATE)
    assert yaml.safe_load(helm_text) == yaml.safe_load(python_text)


def test_template_blocks_and_missing_variables_agree(chart_dir: Path, tmp_path: Path) -> None:
    """A template with an extra @if block and an extra variable: both renderers treat them alike."""
    copy_dir = tmp_path / "semantic-cache"
    shutil.copytree(chart_dir, copy_dir)
    template = copy_dir / "files" / "envoy.yaml"
    template.write_text(
        template.read_text()
        + "  # @if EXTRA_CLUSTER\n"
        + "  - name: extra\n    type: STATIC\n    connect_timeout: ${EXTRA_TIMEOUT:-2s}\n"
        + "  # @endif EXTRA_CLUSTER\n"
    )
    # "" takes the default, as in a shell (and as the processor's own config reads ${VAR:-x})
    for flag, timeout in (("true", "7s"), ("true", ""), ("false", None)):
        extra = {"EXTRA_CLUSTER": flag} | ({"EXTRA_TIMEOUT": timeout} if timeout is not None else {})
        helm_text = render(copy_dir, {"envoy": {"templateVars": extra}}).data(
            f"{RELEASE}-envoy", "envoy.yaml"
        )
        python_text = render_envoy_config(CHART_ENVOY_VARS | extra, template)
        assert yaml.safe_load(helm_text) == yaml.safe_load(python_text)
        clusters = {c["name"]: c for c in yaml.safe_load(helm_text)["static_resources"]["clusters"]}
        assert ("extra" in clusters) is (flag == "true")
        if flag == "true":
            assert clusters["extra"]["connect_timeout"] == (timeout or "2s")
    template.write_text(template.read_text() + "# ${REQUIRED_WITHOUT_DEFAULT}\n")
    with pytest.raises(helm.HelmRenderError, match="REQUIRED_WITHOUT_DEFAULT"):
        helm_render(copy_dir)
    with pytest.raises(ConfigError, match="REQUIRED_WITHOUT_DEFAULT"):
        render_envoy_config(CHART_ENVOY_VARS, template)


def test_envoy_image_matches_the_validating_binary() -> None:
    tag = yaml.safe_load((CHART / "values.yaml").read_text())["envoy"]["image"]["tag"]
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=True).stdout
    binary = re.search(r"/(\d+\.\d+)\.\d+/", version)
    assert binary and tag.startswith(f"v{binary.group(1)}."), (tag, version)


AUTH_FILTER = {
    "name": "envoy.filters.http.ext_authz",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "transport_api_version": "V3",
        "grpc_service": {"envoy_grpc": {"cluster_name": "authz"}},
        "failure_mode_allow": False,
    },
}
AUTH_CLUSTER = {
    "name": "authz",
    "type": "STRICT_DNS",
    "connect_timeout": "1s",
    "typed_extension_protocol_options": {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}},
        }
    },
    "load_assignment": {
        "cluster_name": "authz",
        "endpoints": [
            {
                "lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "authz", "port_value": 9000}}}}
                ]
            }
        ],
    },
}


def test_authentication_goes_before_the_cache_in_both_renderers(chart: Path, tmp_path: Path) -> None:
    """A hit never reaches the upstream: a filter that must cover hits sits before ext_proc."""
    values = {"envoy": {"httpFilters": [AUTH_FILTER], "clusters": [AUTH_CLUSTER]}}
    helm_text = render(chart, values).data(f"{RELEASE}-envoy", "envoy.yaml")
    variables = {
        "ENVOY_HTTP_FILTERS": json.dumps([AUTH_FILTER]),
        "ENVOY_CLUSTERS": json.dumps([AUTH_CLUSTER]),
    }
    python_text = render_envoy_config(CHART_ENVOY_VARS | variables, ENVOY_TEMPLATE)
    config = yaml.safe_load(helm_text)
    assert config == yaml.safe_load(python_text)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in manager["http_filters"]]
    assert names.index("envoy.filters.http.ext_authz") == names.index("envoy.filters.http.ext_proc") - 1
    assert names.index("envoy.filters.http.header_mutation") < names.index("envoy.filters.http.ext_authz")
    assert "authz" in [c["name"] for c in config["static_resources"]["clusters"]]
    result = envoy_validate(helm_text, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_filter_list_that_is_not_one_is_refused() -> None:
    for bad in ("{name: x}", "- just a string", "[unclosed"):
        with pytest.raises(ConfigError, match="ENVOY_HTTP_FILTERS"):
            render_envoy_config(CHART_ENVOY_VARS | {"ENVOY_HTTP_FILTERS": bad}, ENVOY_TEMPLATE)


def test_neither_cluster_keeps_envoys_1024_request_circuit_breaker() -> None:
    """Past 1024 concurrent requests Envoy failed the processor's stream (the request went
    upstream uncached, unseen) and would 503 the LLM call itself."""
    for env, expected in (
        (CHART_ENVOY_VARS, 50000),
        (CHART_ENVOY_VARS | {"ENVOY_MAX_CONNECTIONS": "8000"}, 8000),
    ):
        config = yaml.safe_load(render_envoy_config(env, ENVOY_TEMPLATE))
        clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
        for name in ("semantic_cache", "upstream"):
            (thresholds,) = clusters[name]["circuit_breakers"]["thresholds"]
            assert thresholds["max_requests"] == thresholds["max_pending_requests"] == expected, name


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("500ms", "0.5s"), ("3s", "3s"), ("10m", "600s"), ("1h", "3600s"), ("1.5s", "1.5s"), ("2500ms", "2.5s")],
)
def test_durations_reach_envoy_in_seconds(chart: Path, tmp_path: Path, written: str, seconds: str) -> None:
    """Envoy takes "0.5s", never "500ms" or "10m" (it refused to start on what the values allowed)."""
    values = {"envoy": {"upstreamTimeout": written, "extprocMessageTimeout": written}}
    helm_text = render(chart, values).data(f"{RELEASE}-envoy", "envoy.yaml")
    python_vars = CHART_ENVOY_VARS | {"UPSTREAM_TIMEOUT": written, "EXTPROC_MESSAGE_TIMEOUT": written}
    assert yaml.safe_load(helm_text) == yaml.safe_load(render_envoy_config(python_vars, ENVOY_TEMPLATE))
    config = yaml.safe_load(helm_text)
    (llm, _) = config["static_resources"]["listeners"]
    manager = llm["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["stream_idle_timeout"] == seconds
    (ext_proc,) = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"]
    assert ext_proc["typed_config"]["message_timeout"] == seconds
    if written in ("500ms", "10m"):
        result = envoy_validate(helm_text, tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]


def test_a_duration_envoy_cannot_read_is_refused_by_both_renderers(chart: Path) -> None:
    with pytest.raises(ConfigError, match="EXTPROC_MESSAGE_TIMEOUT: '3 seconds' is not a duration"):
        render_envoy_config(CHART_ENVOY_VARS | {"EXTPROC_MESSAGE_TIMEOUT": "3 seconds"}, ENVOY_TEMPLATE)
    # The chart's schema refuses it (its pattern is the renderers' own).
    with pytest.raises(Exception, match="extprocMessageTimeout"):
        helm_render(chart, {"envoy": {"extprocMessageTimeout": "3 seconds"}})


@pytest.mark.parametrize(
    ("values", "clash"),
    [
        ({"envoy": {"metrics": {"port": 9901}}}, "envoy.adminPort and envoy.metrics.port are both 9901"),
        (
            {"envoy": {"metrics": {"port": 9190}}},
            "envoy.metrics.port and processor.metricsPort are both 9190",
        ),
        ({"processor": {"grpcPort": 8801}}, "envoy.port and processor.grpcPort are both 8801"),
    ],
)
def test_two_listeners_of_the_pod_on_one_port_fail_the_render(chart: Path, values: Doc, clash: str) -> None:
    """The containers share the pod's network: the second listener would fail at start."""
    with pytest.raises(Exception, match=clash):
        helm_render(chart, values)
    off = {"envoy": {"metrics": {"enabled": False, "port": 9901}}}
    assert "envoy-metrics" not in json.dumps(render(chart, off).pod)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"UPSTREAM_URL": "http://vllm:80000"}, "has no valid port"),
        ({"UPSTREAM_TIMEOUT": "100000000h"}, "outside what Envoy takes"),
        ({"UPSTREAM_TIMEOUT": "0.0000000001s"}, "outside what Envoy takes"),
        ({"EXTPROC_MAX_MESSAGE_TIMEOUT": "90000"}, "is not a duration"),
    ],
)
def test_the_python_renderer_refuses_what_envoy_would(variables: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        render_envoy_config(CHART_ENVOY_VARS | variables, ENVOY_TEMPLATE)


def test_the_template_is_found_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`semantic-cache run` / `render-envoy` outside the checkout's root said "Envoy template not
    found" (it looked in extproc/envoy/)."""
    from extproc.cli.envoy import TEMPLATE_ENV, template_path

    monkeypatch.delenv(TEMPLATE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert template_path().resolve() == ENVOY_TEMPLATE.resolve()


def test_an_installed_wheel_finds_the_template_it_carries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pip-installed CLI (no source tree) said "Envoy template not found": the wheel now carries
    the template as data (pyproject's data-files, under <prefix>/share/semantic-cache/envoy/)."""
    import sys
    import tomllib

    from extproc.cli import envoy

    root = Path(__file__).resolve().parents[2]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["data-files"]["share/semantic-cache/envoy"]
    assert [(root / f).resolve() for f in shipped] == [ENVOY_TEMPLATE.resolve()]
    site = tmp_path / "venv" / "lib" / "site-packages" / "extproc" / "cli"
    site.mkdir(parents=True)
    installed = tmp_path / "venv" / "share" / "semantic-cache" / "envoy" / "envoy.yaml"
    installed.parent.mkdir(parents=True)
    installed.write_text(ENVOY_TEMPLATE.read_text())
    monkeypatch.setattr(envoy, "__file__", str(site / "envoy.py"))  # no source tree around it
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    monkeypatch.delenv(envoy.TEMPLATE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert envoy.template_path() == installed
