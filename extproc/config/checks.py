"""Value checks for configuration sections: a key spec, small check builders, one validator.

Shared by ``settings.py`` (the ``semantic_cache`` section) and ``milvus.py`` (milvus.yaml).
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

Check = Callable[[Any], str | None]


def one_of(*choices: str) -> Check:
    """A check that the value is one of ``choices``."""
    return lambda v: None if v in choices else "must be one of " + ", ".join(f'"{c}"' for c in choices)


def int_range(lo: int, hi: int | None = None) -> Check:
    """A check that an integer lies in [lo, hi]."""

    def check(v: Any) -> str | None:
        if v < lo or (hi is not None and v > hi):
            return f"must be an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "")
        return None

    return check


MAX_SECONDS = 10**10
"""The longest lifetime a setting may give (317 years): one every backend stores (Milvus keeps
expiry times as int64 milliseconds)."""
seconds = int_range(0, MAX_SECONDS)
"""A check for a lifetime in seconds: 0 (a meaning of its own) up to MAX_SECONDS."""


def unit_interval(v: Any) -> str | None:
    """A check that a number lies in [0, 1]."""
    return None if 0.0 <= v <= 1.0 else "must be a number between 0 and 1 (e.g. 0.9)"


def positive(v: Any) -> str | None:
    """A check that a number is > 0."""
    return None if v > 0 else "must be a positive number"


def address(v: Any) -> str | None:
    """A check for "host:port" with a port in 1..65535."""
    host, sep, port = v.rpartition(":")
    ok = sep and host and port.isdigit() and 0 < int(port) < 65536
    return None if ok else 'must be "host:port", e.g. "127.0.0.1:50051"'


def revision(v: Any) -> str | None:
    """A check for a printable revision label of at most 128 characters."""
    ok = len(v) <= 128 and v.isprintable()
    return None if ok else "must be printable and at most 128 characters (e.g. a weights hash or date)"


def optional_header_name(v: Any) -> str | None:
    """A check for an HTTP header name, or "" for none."""
    return None if v == "" else header_name(v)


def import_spec(v: Any) -> str | None:
    """A check for "package.module:function", or "" for none."""
    ok = v == "" or re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", v) is not None
    return None if ok else 'must be "package.module:function" (a factory returning a guard) or ""'


def optional_http_url(v: Any) -> str | None:
    """A check for an http(s) URL with a host, or "" for none."""
    ok = v == "" or re.fullmatch(r"https?://[^/\s:]+(:\d{1,5})?(/\S*)?", v) is not None
    return None if ok else 'must be "" or an http(s) URL such as "http://embed:8000/v1/embeddings"'


def header_name(v: Any) -> str | None:
    """A check for an HTTP header name (RFC 9110 token characters)."""
    ok = re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", v) is not None
    return None if ok else "must be an HTTP header name such as x-tenant-id"


_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", re.I)
_ORIGIN = re.compile(r"https?://(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(:\d{1,5})?", re.I)


def _is_host(item: Any) -> bool:
    if not isinstance(item, str) or not item:
        return False
    try:
        ipaddress.ip_address(item.strip("[]"))
        return True
    except ValueError:
        pass
    labels = item.rstrip(".").split(".")
    return len(item) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def host_names(v: Any) -> str | None:
    """A check for a list of host names or IP addresses (no scheme, port, path or wildcard)."""
    for item in v:
        if not _is_host(item):
            return (
                "every item must be a host name or IP address, without scheme, port or wildcard "
                f'(e.g. "semantic-router-admin.my-ns.svc"), got {item!r}'
            )
    return None


def origins(v: Any) -> str | None:
    """A check for a list of browser origins: ``http(s)://host[:port]``, no path."""
    for item in v:
        if not isinstance(item, str) or not _ORIGIN.fullmatch(item.rstrip("/")):
            return f'every item must be an origin such as "https://ops.example.com", got {item!r}'
    return None


KeySpec = dict[str, tuple[type | tuple[type, ...], str, Check | None]]
"""key -> (python type(s), type description, extra check)."""


def check_section(
    section: Mapping[str, Any], spec: KeySpec, prefix: str, errors: list[str]
) -> dict[str, Any]:
    """Check a mapping against ``spec``; append one message per problem to ``errors``."""
    out: dict[str, Any] = {}
    for key, value in section.items():
        path = f"{prefix}.{key}"
        if key not in spec:
            guess = did_you_mean(str(key), spec)
            hint = (
                f"did you mean `{guess}`?" if guess else "remove it or use one of: " + ", ".join(sorted(spec))
            )
            errors.append(f"{path}: unknown key; {hint}")
            continue
        types, desc, check = spec[key]
        is_bool = isinstance(value, bool)
        shown = "(not shown)" if is_secret(str(key)) else repr(value)
        if not isinstance(value, types) or (is_bool and types is not bool and bool not in _as_tuple(types)):
            errors.append(f"{path}: must be {desc}, got {type(value).__name__} {shown}")
            continue
        problem = check(value) if check else None
        if problem:
            errors.append(f"{path}: {problem}, got {shown}")
            continue
        out[key] = value
    return out


SECRET_WORDS = ("password", "token", "secret")


def is_secret(key: str) -> bool:
    """True for a key whose value must never be printed (passwords, tokens)."""
    return any(word in key.lower() for word in SECRET_WORDS)


def did_you_mean(word: str, known: Iterable[str]) -> str | None:
    """The known key closest to a misspelt one (``treshold`` → ``similarity_threshold``), or None."""
    # A key is also matched by its tails ("threshold", "content_swaps"): users misspell a part.
    by_form: dict[str, str] = {}
    for key in known:
        parts = key.split("_")
        for i in range(len(parts)):
            by_form.setdefault("_".join(parts[i:]), key)
    close = difflib.get_close_matches(word.lower(), by_form, n=1, cutoff=0.75)
    return by_form[close[0]] if close else None


def _as_tuple(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)
