"""The runbook's ConfigMap edits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extproc.config.settings import load_config

from .helpers import RELEASE, Rendered, install_configs, literal_env


def test_runbook_migration_and_rollback_on_rendered_objects(
    rendered: dict[str, Rendered], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = rendered["auth-tls"]  # header scoping, so loosening would show
    workdir = install_configs(r, tmp_path)
    monkeypatch.chdir(workdir)  # the pod's working directory /app
    env = literal_env(r)
    config = workdir / "config" / "config.yaml"

    # Step 3 of the staged migration: `kubectl edit` backend_type in semantic-router-config.
    memory = rendered["memory"].data(f"{RELEASE}-config", "config.yaml")
    config.write_text(memory.replace('backend_type: "memory"', 'backend_type: "milvus"'))
    migrated = load_config(config, env=env)
    assert migrated.backend_type == "milvus"
    assert migrated.backend_config_file() == workdir / "config" / "semantic-cache" / "milvus.yaml"

    # Rollback: the runbook's merge patch replaces the whole file.
    patch = json.loads('{"data":{"config.yaml":"semantic_cache:\\n backend_type: \\"memory\\""}}')
    config.write_text(patch["data"]["config.yaml"])
    rolled_back = load_config(config, env=env)
    assert rolled_back.backend_type == "memory"
    # Deployment settings come from the environment: the minimal file did not loosen them.
    assert rolled_back.scope_mode == "header" and rolled_back.scope_header == "x-tenant-id"
    assert rolled_back.server.grpc_address == "127.0.0.1:50051"
