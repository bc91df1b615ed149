"""milvus.yaml: the default path, TLS file choice, credentials from the environment, check-config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from extproc.cache.backends.milvus.client import tls_kwargs
from extproc.config.milvus import (
    MilvusSettings,
    looks_like_milvus_config,
    parse_milvus_config,
    tls_files,
)
from extproc.config.settings import DEFAULT_MILVUS_CONFIG_PATH, load_config
from extproc.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
RUNBOOK_AUTH = (
    "connection:\n  host: milvus\n  port: 19530\n  auth:\n    enabled: true\n"
    '    username: "${MILVUS_USERNAME}"\n    password: "${MILVUS_PASSWORD}"\n  tls:\n    enabled: true\n'
)


def layout(base: Path, config: str, milvus: str | None = "connection: {host: milvus}\n") -> Path:
    """The chart's (and the repository's) layout: config/config.yaml, config/semantic-cache/milvus.yaml."""
    (base / "config" / "semantic-cache").mkdir(parents=True)
    (base / "config" / "config.yaml").write_text(config)
    if milvus is not None:
        (base / "config" / "semantic-cache" / "milvus.yaml").write_text(milvus)
    return base / "config" / "config.yaml"


def test_backend_type_alone_uses_the_default_milvus_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runbook's rollback patch replaced config.yaml; switching back writes backend_type alone.
    config = layout(tmp_path, 'semantic_cache:\n backend_type: "milvus"\n')
    monkeypatch.chdir(tmp_path)
    settings = load_config(config)
    assert settings.backend_config_path == DEFAULT_MILVUS_CONFIG_PATH
    assert settings.milvus().host == "milvus" and settings.eviction_policy == "fifo"


def test_missing_default_milvus_file_says_it_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = layout(tmp_path, 'semantic_cache:\n backend_type: "milvus"\n', milvus=None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    text = str(info.value)
    assert "backend_config_path is not set, so the default 'config/semantic-cache/milvus.yaml'" in text
    assert str(tmp_path / "config" / "semantic-cache" / "milvus.yaml") in text
    # The memory backend never reads the default file, so its absence is no error.
    assert (
        load_config(layout(tmp_path / "m", 'semantic_cache:\n backend_type: "memory"\n', None)).backend_type
        == "memory"
    )


def make_files(folder: Path, *names: str) -> Path:
    """Empty files standing for PEM files (only their existence matters here)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("pem")
    return folder


def tls_settings(**tls: str) -> MilvusSettings:
    """Settings with TLS on and these file keys."""
    return parse_milvus_config({"connection": {"tls": {"enabled": True, **tls}}}, "m.yaml")


def test_secret_with_only_a_ca_is_one_way_tls(tmp_path: Path) -> None:
    folder = make_files(tmp_path / "secret", "ca.crt")
    files = tls_files(tls_settings(), str(folder))
    assert (files.ca, files.cert, files.key, files.mutual) == (str(folder / "ca.crt"), None, None, False)
    assert tls_kwargs(files) == {"secure": True, "server_pem_path": str(folder / "ca.crt")}
    assert "one-way TLS (CA " in files.describe()


def test_no_ca_uses_the_system_trust_store(tmp_path: Path) -> None:
    files = tls_files(tls_settings(), str(tmp_path / "no-secret"))
    assert files.ca is None and not files.mutual
    assert tls_kwargs(files) == {"secure": True, "server_pem_path": ""}  # gRPC's default roots
    assert files.describe() == "one-way TLS (the system trust store, no client certificate)"


def test_all_three_files_are_mutual_tls(tmp_path: Path) -> None:
    folder = make_files(tmp_path / "secret", "ca.crt", "client.crt", "client.key")
    files = tls_files(tls_settings(), str(folder))
    assert files.mutual
    assert tls_kwargs(files) == {
        "secure": True,
        "ca_pem_path": str(folder / "ca.crt"),
        "client_pem_path": str(folder / "client.crt"),
        "client_key_path": str(folder / "client.key"),
    }
    explicit = make_files(tmp_path / "elsewhere", "a.pem", "c.pem", "k.pem")
    keys = {"ca_file": "a.pem", "cert_file": "c.pem", "key_file": "k.pem"}
    files = tls_files(tls_settings(**{k: str(explicit / v) for k, v in keys.items()}), str(folder))
    assert (files.ca, files.cert, files.key) == tuple(str(explicit / v) for v in keys.values())


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (("ca.crt", "client.crt"), "a client certificate ({d}/client.crt) but no client key ({d}/client.key"),
        (("ca.crt", "client.key"), "a client key ({d}/client.key) but no client certificate ({d}/client.crt"),
        (("client.crt", "client.key"), "mutual TLS (client certificate and key) needs the CA"),
    ],
)
def test_half_a_client_pair_is_a_precise_error(
    tmp_path: Path, present: tuple[str, ...], expected: str
) -> None:
    folder = make_files(tmp_path / "secret", *present)
    with pytest.raises(ConfigError) as info:
        tls_files(tls_settings(), str(folder))
    assert expected.format(d=folder) in str(info.value)


def test_a_named_tls_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"connection\.tls\.ca_file: .*/nope\.crt does not exist"):
        tls_files(tls_settings(ca_file=str(tmp_path / "nope.crt")), str(tmp_path))


def test_credentials_come_from_the_environment_only_when_auth_is_on() -> None:
    raw = {"connection": {"auth": {"enabled": False, "username": "${MILVUS_USERNAME}"}}}
    assert not parse_milvus_config(raw, "m.yaml", env={}).auth_enabled  # unused: no error
    raw["connection"]["auth"]["enabled"] = True
    with pytest.raises(ConfigError) as info:
        parse_milvus_config(raw, "m.yaml", env={})
    text = str(info.value)
    assert "m.yaml: connection.auth.username: environment variable MILVUS_USERNAME is not set" in text
    assert "connection.auth.enabled is true" in text and "Secret milvus-auth" in text
    s = parse_milvus_config(
        {"connection": {"auth": {"enabled": True, "username": "u", "password": "${P}"}}},
        "m",
        env={"P": "S3cretPw"},
    )
    assert s.password == "S3cretPw" and "S3cretPw" not in repr(s)


def test_shape_tells_a_milvus_file_from_a_router_config() -> None:
    assert looks_like_milvus_config({"connection": {}, "collection": {}})
    assert not looks_like_milvus_config({"semantic_cache": {}})
    assert not looks_like_milvus_config({"connection": {}, "semantic_cache": {}})
    assert not looks_like_milvus_config({}) and not looks_like_milvus_config(None)


def run_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``semantic-cache check-config`` in a child process."""
    from tests.conftest import python_exe

    return subprocess.run(
        [python_exe(), "-m", "extproc.cli", "check-config", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def test_check_config_on_milvus_yaml(tmp_path: Path) -> None:
    shipped = run_check(str(ROOT / DEFAULT_MILVUS_CONFIG_PATH))
    assert shipped.returncode == 0, shipped.stderr
    assert "OK (a Milvus client file, milvus.yaml)" in shipped.stdout and "tls: off" in shipped.stdout

    runbook = tmp_path / "milvus.yaml"
    runbook.write_text(RUNBOOK_AUTH)
    missing = run_check(str(runbook), env={"PATH": "/usr/bin:/bin"})
    assert missing.returncode == 2
    assert "connection.auth.username: environment variable MILVUS_USERNAME is not set" in missing.stderr
    assert "no semantic_cache: section" not in missing.stderr

    env = {"PATH": "/usr/bin:/bin", "MILVUS_USERNAME": "cache", "MILVUS_PASSWORD": "S3cretPw"}
    ok = run_check(str(runbook), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "auth: user 'cache', password (set, not shown)" in ok.stdout
    assert "S3cretPw" not in ok.stdout + ok.stderr
    assert "tls: one-way TLS (" in ok.stdout


def test_credentials_in_a_uri_are_never_shown() -> None:
    """pymilvus reads user:password from the URI; /readyz (no token), logs, admin stats and
    check-config name the server by its address."""
    from extproc.config.milvus import parse_milvus_config
    from extproc.config.report import milvus_lines

    s = parse_milvus_config({"connection": {"uri": "http://root:Planted-Pw1@milvus:19530"}}, "m.yaml")
    assert s.address == "http://***@milvus:19530" and s.client_uri().endswith("@milvus:19530")
    assert "Planted-Pw1" not in repr(s) and "Planted-Pw1" not in "\n".join(milvus_lines(s))


def test_a_search_for_more_results_than_ef_raises_ef() -> None:
    """HNSW refuses ef below the limit: topk 100 (allowed up to 1000) failed every lookup, and an
    admin invalidate by prompt with limit 500 too."""
    s = MilvusSettings(search_params={"ef": 64}, metric_type="IP")
    assert s.search_request(10) == {"metric_type": "IP", "params": {"ef": 64}}
    assert s.search_request(100) == {"metric_type": "IP", "params": {"ef": 100}}
    assert s.search_params == {"ef": 64}  # the setting itself is unchanged
    assert MilvusSettings(search_params={"nprobe": 16}).search_request(500)["params"] == {"nprobe": 16}
