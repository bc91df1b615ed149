"""check-config's report: one line per setting with its source, secrets masked, "did you mean"."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from extproc.admin.live_config import ConfigWatcher
from extproc.config.checks import did_you_mean
from extproc.config.report import settings_lines, show
from extproc.config.settings import _CACHE_KEYS, load_config
from extproc.errors import ConfigError

PLANTED = "S3cretPw-planted"


def test_every_setting_once_with_its_source(tmp_path: Path) -> None:
    (tmp_path / "milvus.yaml").write_text(
        "connection:\n  auth:\n    enabled: true\n"
        '    username: "${MILVUS_USERNAME}"\n    password: "${MILVUS_PASSWORD}"\n'
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        'semantic_cache:\n  backend_type: "milvus"\n  backend_config_path: "milvus.yaml"\n'
        '  ttl_seconds: "${TTL:-60}"\n  server:\n    admin_address: "127.0.0.1:9999"\n'
    )
    env = {
        "MILVUS_USERNAME": "cache",
        "MILVUS_PASSWORD": PLANTED,
        "SEMANTIC_CACHE_SCOPE_MODE": "header",
    }
    settings = load_config(config, env)
    lines = settings_lines(settings, env)
    text = "\n".join(lines)
    assert PLANTED not in text and PLANTED not in repr(settings)
    by_key = {line.split(":", 1)[0]: line for line in lines if not line.startswith(" ")}
    assert by_key["backend_type"].endswith("(file)")
    assert by_key["ttl_seconds"].startswith("ttl_seconds: 60 ") and by_key["ttl_seconds"].endswith(
        "(file, ${TTL:-60})"
    )
    assert by_key["scope_mode"].endswith("(env SEMANTIC_CACHE_SCOPE_MODE)")
    assert by_key["similarity_threshold"].endswith("(default)")
    assert by_key["server.admin_address"].endswith("(file)")
    assert "  auth: user 'cache', password (set, not shown)" in lines
    keys = [line.split(":", 1)[0] for line in lines if not line.startswith(" ") and "(" in line]
    assert len(keys) == len(set(keys))  # one line per setting


def test_secrets_are_never_shown() -> None:
    assert show("password", PLANTED) == "(set, not shown)"
    assert show("admin_token", PLANTED) == "(set, not shown)"
    assert show("password", "") == '""'


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("treshold", "similarity_threshold"),
        ("similarity_treshold", "similarity_threshold"),
        ("max_entry", "max_entries"),
        ("embeding_model", "embedding_model"),
        ("top-k", "top_k"),
        ("completely_unrelated", None),
    ],
)
def test_did_you_mean(typo: str, meant: str | None) -> None:
    assert did_you_mean(typo, _CACHE_KEYS) == meant


def test_unknown_key_error_suggests(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("semantic_cache:\n  treshold: 0.8\n")
    with pytest.raises(
        ConfigError, match=r"semantic_cache\.treshold: unknown key; did you mean `similarity_threshold`\?"
    ):
        load_config(config)


def test_a_bad_password_value_is_not_echoed_in_the_error() -> None:
    from extproc.config.milvus import parse_milvus_config

    with pytest.raises(ConfigError) as info:
        parse_milvus_config(
            {"connection": {"auth": {"enabled": True, "username": "u", "password": 731994}}}, "m"
        )
    assert "connection.auth.password: must be" in str(info.value) and "731994" not in str(info.value)


def test_a_secret_source_names_only_its_variable(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        'semantic_cache:\n  scope_header: "${HDR:-x-org}"\n'
        f'  verification:\n    entry_secret: "pre-${{ES:-{PLANTED}}}"\n'
    )
    lines = settings_lines(load_config(config, {}), {})
    text = "\n".join(lines)
    assert PLANTED not in text and "pre-" not in text
    by_key = {line.split(":", 1)[0]: line for line in lines}
    assert by_key["verification.entry_secret"].endswith("(file, ${ES})")
    assert by_key["scope_header"].endswith("(file, ${HDR:-x-org})")  # not a secret: shown as written


def test_the_entry_secret_variable_is_named_as_the_source(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("semantic_cache:\n  verification:\n    entry_secret: from-the-file\n")
    env = {"SEMANTIC_CACHE_ENTRY_SECRET": PLANTED}
    settings = load_config(config, env)
    assert settings.verification.entry_secret == PLANTED
    line = next(x for x in settings_lines(settings, env) if x.startswith("verification.entry_secret:"))
    assert line.endswith("(env SEMANTIC_CACHE_ENTRY_SECRET)") and PLANTED not in line


def test_notes_are_advice_not_a_setting(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("semantic_cache:\n  similarity_threshold: 0.85\n")
    settings = load_config(config, {})
    assert settings.notes  # the file is one the advice is about
    assert not [line for line in settings_lines(settings, {}) if line.startswith("notes")]

    # A live reload that adds min_confidence drops the note: only min_confidence changed.
    shared = SimpleNamespace(settings=settings, config_error="")
    watcher = ConfigWatcher(shared, str(config))  # type: ignore[arg-type]
    config.write_text("semantic_cache:\n  similarity_threshold: 0.85\n  min_confidence: 0.8\n")
    with caplog.at_level(logging.WARNING, logger="extproc.admin.live_config"):
        watcher.apply(load_config(config, {}))
    changed = [r.getMessage() for r in caplog.records if "restart the processor" in r.getMessage()]
    assert changed == [f"{config} changed min_confidence: restart the processor to apply"]


def test_policies_are_listed_one_line_each(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "semantic_cache:\n  policies:\n"
        "    - {name: code, match: {model: 'codellama-*'}, ttl_seconds: 86400}\n"
        "    - {match: {route: classify}, enabled: false}\n"
    )
    lines = settings_lines(load_config(config, {}), {})
    at = lines.index(next(line for line in lines if line.startswith("policies: 2")))
    assert lines[at + 1 : at + 3] == [
        "  code: model codellama-* -> ttl_seconds 86400",
        "  policy1: route classify -> enabled false",
    ]
    assert max(len(line) for line in lines) < 120  # no repr widening every line


@pytest.mark.parametrize(
    ("yaml_text", "env", "message"),
    [
        (
            'semantic_cache:\n  backend_type: milvus\n  backend_config_path: "milvus.yaml"\n',
            {},
            "collection.vector_field.dimension is 768 but the embedding model all-MiniLM-L6-v2 produces 384",
        ),
        ('semantic_cache:\n  embedding_model: "/nonexistent/model"\n', {}, "neither 'all-MiniLM-L6-v2'"),
        ("semantic_cache: {}\n", {"SEMANTIC_CACHE_ADMIN_ADDRESS": "0.0.0.0:9191"}, "without a token"),
    ],
)
def test_check_config_refuses_what_the_start_refuses(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    yaml_text: str,
    env: dict[str, str],
    message: str,
) -> None:
    """Checked before a restart, a config must not pass here and then stop the processor."""
    from extproc.cli.main import main

    (tmp_path / "milvus.yaml").write_text("collection:\n  vector_field:\n    dimension: 768\n")
    (tmp_path / "config.yaml").write_text(yaml_text)
    monkeypatch.delenv("SEMANTIC_CACHE_ADMIN_TOKEN", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["--log-level", "error", "check-config", str(tmp_path / "config.yaml")]) == 2
    assert message in capsys.readouterr().err


def test_a_model_folder_tells_its_dimension(tmp_path: Path) -> None:
    from extproc.embedding.base import model_dimension, resolve_model_path

    assert model_dimension(resolve_model_path("all-MiniLM-L6-v2")) == 384
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "2_Dense").mkdir()
    modules = [
        {"path": "", "type": "sentence_transformers.models.Transformer"},
        {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    pooling = {
        "word_embedding_dimension": 768,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": True,
    }
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    assert model_dimension(tmp_path) == 1536  # two pooling modes, concatenated
    modules.append({"path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "2_Dense" / "config.json").write_text('{"in_features": 1536, "out_features": 256}')
    assert model_dimension(tmp_path) == 256
    assert model_dimension(tmp_path / "missing") is None


def test_render_envoy_strips_the_header_the_processor_scopes_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rendered from the environment alone, Envoy stripped x-tenant-id while the processor
    scoped by its config's x-org-id: any client could pick its tenant."""
    from extproc.cli.main import main

    config = tmp_path / "config.yaml"
    config.write_text("semantic_cache:\n  scope_mode: header\n  scope_header: X-Org-Id\n")
    monkeypatch.delenv("SCOPE_HEADER", raising=False)
    monkeypatch.delenv("SEMANTIC_CACHE_SCOPE_HEADER", raising=False)
    assert main(["--log-level", "error", "render-envoy", "--config", str(config)]) == 0
    rendered = capsys.readouterr().out
    assert '- remove: "x-org-id"' in rendered and '- remove: "x-tenant-id"' not in rendered
    monkeypatch.setenv("SCOPE_HEADER", "x-tenant-id")
    assert main(["--log-level", "error", "render-envoy", "--config", str(config)]) == 2
    assert "Envoy would strip the wrong header" in capsys.readouterr().err
