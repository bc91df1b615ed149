"""Where the pod's listeners bind: the processor's metrics (and token-protected admin) listener
follows Envoy's address family, so an IPv6-only cluster's probes and scrapes reach it."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from .helpers import Doc, check_config, envoy_config, render, socket_of


@pytest.mark.parametrize(
    ("values", "metrics", "admin"),
    [
        ({}, "0.0.0.0:9190", "127.0.0.1:9191"),
        ({"admin": {"tokenSecret": {"name": "t"}}}, "0.0.0.0:9190", "0.0.0.0:9191"),
        ({"envoy": {"listenAddress": "::"}}, ":::9190", "127.0.0.1:9191"),
        ({"envoy": {"listenAddress": "::"}, "admin": {"tokenSecret": {"name": "t"}}}, ":::9190", ":::9191"),
        ({"processor": {"listenAddress": "[::]"}}, ":::9190", "127.0.0.1:9191"),
        ({"envoy": {"listenAddress": "::"}, "processor": {"listenAddress": "0.0.0.0"}}, "0.0.0.0:9190", None),
    ],
    ids=["default", "admin-token", "ipv6", "ipv6-admin-token", "explicit-bracketed", "explicit-ipv4"],
)
def test_processor_binds_the_family_of_envoy(
    chart: Path, tmp_path: Path, values: Doc, metrics: str, admin: str | None
) -> None:
    r = render(chart, values)
    env = r.env("processor")
    assert env["SEMANTIC_CACHE_METRICS_ADDRESS"] == metrics
    if admin is not None:
        assert env["SEMANTIC_CACHE_ADMIN_ADDRESS"] == admin
    # The processor splits HOST:PORT at the last colon and binds HOST as is: no brackets.
    host, _, port = metrics.rpartition(":")
    assert ipaddress.ip_address(host).is_unspecified and port == "9190"
    listen_host, _ = socket_of(envoy_config(r)["static_resources"]["listeners"][0]["address"])
    same_family = ipaddress.ip_address(listen_host).version == ipaddress.ip_address(host).version
    assert same_family or "processor" in values
    # The processor accepts the addresses it is given (check-config with the pod's environment).
    result = check_config(r, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
