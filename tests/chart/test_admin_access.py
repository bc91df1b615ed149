"""Who reaches the admin API in the chart: its Service, the Host names and Origins it accepts."""

from __future__ import annotations

import re
from pathlib import Path

import helm_python as helm
import pytest

from extproc.config.settings import parse_config

from .helpers import NS, RELEASE, Doc, check_config, literal_env, loaded, render, validate_object

TOKEN = {"admin": {"tokenSecret": {"name": "semantic-cache-admin"}}}
SERVICE_NAMES = [
    f"{RELEASE}-admin",
    f"{RELEASE}-admin.{NS}",
    f"{RELEASE}-admin.{NS}.svc",
    f"{RELEASE}-admin.{NS}.svc.cluster.local",
]


def test_on_loopback_there_is_no_admin_service_and_no_extra_name(chart: Path) -> None:
    r = render(chart)
    assert f"Service/{RELEASE}-admin" not in r.names()
    env = r.env("processor")
    assert (
        "SEMANTIC_CACHE_ADMIN_ALLOWED_HOSTS" not in env and "SEMANTIC_CACHE_ADMIN_ALLOWED_ORIGINS" not in env
    )


def test_with_a_token_in_cluster_callers_use_the_admin_services_names(chart: Path, tmp_path: Path) -> None:
    r = render(chart, TOKEN)
    service = r.one("Service", f"{RELEASE}-admin")
    validate_object(service)
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "admin", "port": 9191, "targetPort": "admin", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"].items() <= r.pod["metadata"]["labels"].items()
    env = r.env("processor")
    assert env["SEMANTIC_CACHE_ADMIN_ALLOWED_HOSTS"].split(",") == SERVICE_NAMES
    # The processor reads the rendered environment as the pod would, and accepts it.
    settings = parse_config({"semantic_cache": {}}, env=literal_env(r))
    assert list(settings.server.admin_allowed_hosts) == SERVICE_NAMES
    done = check_config(r, tmp_path)
    assert done.returncode == 0, done.stderr


def test_extra_names_and_origins_from_values(chart: Path) -> None:
    values: Doc = {
        "admin": {
            "tokenSecret": {"name": "semantic-cache-admin"},
            "allowedHosts": ["cache-admin.example.com", f"{RELEASE}-admin"],
            "allowedOrigins": ["https://ops.example.com", "http://127.0.0.1:3000"],
        }
    }
    env = render(chart, values).env("processor")
    assert env["SEMANTIC_CACHE_ADMIN_ALLOWED_HOSTS"].split(",") == [*SERVICE_NAMES, "cache-admin.example.com"]
    assert env["SEMANTIC_CACHE_ADMIN_ALLOWED_ORIGINS"] == "https://ops.example.com,http://127.0.0.1:3000"
    loopback = render(chart, {"admin": {"allowedHosts": ["laptop.example"]}}).env("processor")
    assert loopback["SEMANTIC_CACHE_ADMIN_ALLOWED_HOSTS"] == "laptop.example"


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"admin": {"allowedHosts": ["*.example.com"]}}, "/admin/allowedHosts/0"),
        ({"admin": {"allowedHosts": ["admin.example.com:9191"]}}, "/admin/allowedHosts/0"),
        ({"admin": {"allowedHosts": "admin.example.com"}}, "/admin/allowedHosts"),
        ({"admin": {"allowedOrigins": ["ops.example.com"]}}, "/admin/allowedOrigins/0"),
        ({"admin": {"allowedOrigins": ["https://ops.example.com/admin"]}}, "/admin/allowedOrigins/0"),
    ],
)
def test_schema_refuses_what_the_processor_would_refuse(chart: Path, values: Doc, where: str) -> None:
    with loaded(chart) as c, pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        c.validate_schema(values)
