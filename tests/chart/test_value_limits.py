"""Values the chart used to accept and render into a pod that never runs (the processor refusing
its config, Envoy refusing its own, the API server refusing an object): refused by the schema or
the templates now, or rendered into what each part reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .helpers import RELEASE, Doc, envoy_validate, helm_render, render

LONG = "r" * 129


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # The processor's own limits (extproc/config/settings.py): it exited at start.
        ({"cache": {"settings": {"coalesce_wait_ms": 120000}}}, "coalesce_wait_ms"),
        ({"cache": {"settings": {"revision": LONG}}}, "revision"),
        ({"cache": {"settings": {"revision": "r1\n"}}}, "revision"),
        ({"cache": {"settings": {"revision_header": "x model rev"}}}, "revision_header"),
        ({"cache": {"settings": {"verifier": "mypkg.guards"}}}, "verifier"),
        ({"cache": {"settings": {"server": {"max_message_bytes": 2**31}}}}, "max_message_bytes"),
        # Envoy's: it refused to start.
        ({"envoy": {"listenAddress": "localhost"}}, "listenAddress"),
        ({"envoy": {"bufferLimitBytes": 2**32}}, "bufferLimitBytes"),
        ({"upstream": {"url": "http://vllm:80000"}}, "port 80000 is not a TCP port"),
        ({"envoy": {"upstreamTimeout": "100000000h"}}, "outside what Envoy takes"),
        ({"envoy": {"templateVars": {"EXTPROC_MAX_MESSAGE_TIMEOUT": "soon"}}}, "is not a duration"),
        # The API server's.
        ({"fullnameOverride": "1router"}, "fullnameOverride"),
        ({"fullnameOverride": "r" * 56}, "fullnameOverride"),
        ({"envoy": {"image": {"tag": ""}}}, "tag"),
        (
            {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
            r"minReplicas \(5\) is above",
        ),
        ({"podDisruptionBudget": {"enabled": True, "maxUnavailable": "one"}}, "maxUnavailable"),
        ({"metrics": {"service": {"port": 9902}}}, "Service <fullname>-metrics would name one port twice"),
    ],
)
def test_a_value_no_part_would_run_with_fails_the_render(chart: Path, values: Doc, message: str) -> None:
    with pytest.raises(Exception, match=message):
        helm_render(chart, values)


def test_a_bracketed_ipv6_listen_address_reaches_envoy_bare(chart: Path, tmp_path: Path) -> None:
    text = render(chart, {"envoy": {"listenAddress": "[::]"}}).data(f"{RELEASE}-envoy", "envoy.yaml")
    listeners = yaml.safe_load(text)["static_resources"]["listeners"]
    assert {ln["address"]["socket_address"]["address"] for ln in listeners} == {"::"}
    result = envoy_validate(text, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_duration_among_the_template_variables_reaches_envoy_in_seconds(chart: Path) -> None:
    values = {"envoy": {"templateVars": {"EXTPROC_MAX_MESSAGE_TIMEOUT": "90000ms"}}}
    text = render(chart, values).data(f"{RELEASE}-envoy", "envoy.yaml")
    assert "max_message_timeout: 90s" in text


def test_the_processor_looks_up_every_body_envoy_hands_it(chart: Path) -> None:
    """envoy.bufferLimitBytes raised to 8 MiB while the processor kept its 1 MiB: bodies in
    between bypassed as request_too_large."""
    r = render(chart, {"envoy": {"bufferLimitBytes": 8388608}})
    assert (
        yaml.safe_load(r.data(f"{RELEASE}-config", "config.yaml"))["semantic_cache"]["max_request_bytes"]
        == 8388608
    )
    own = render(
        chart, {"envoy": {"bufferLimitBytes": 8388608}, "cache": {"settings": {"max_request_bytes": 2048}}}
    )
    assert (
        yaml.safe_load(own.data(f"{RELEASE}-config", "config.yaml"))["semantic_cache"]["max_request_bytes"]
        == 2048
    )


def test_strings_stay_strings_and_an_ipv6_collector_is_bracketed(chart: Path) -> None:
    values: Doc = {
        "metrics": {"prometheusRule": {"enabled": True, "force": True, "severity": "1"}},
        "milvusTls": {"secretName": "0755"},
        "tracing": {"enabled": True, "collector": {"host": "::1", "port": 4317}},
    }
    r = render(chart, values)
    (rule,) = r.all("PrometheusRule")
    assert {a["labels"]["severity"] for g in rule["spec"]["groups"] for a in g["rules"]} == {"1"}
    volumes = {v["name"]: v for v in r.pod["spec"]["volumes"]}
    assert volumes["milvus-tls"]["secret"]["secretName"] == "0755"
    env = {e["name"]: e.get("value") for e in r.container("processor")["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://[::1]:4317"
