"""Per-route and per-model policies: the ``policies:`` list of config.yaml, checked and resolved.

One global setting does not fit a deployment serving a chat model, a code model and a
classification route.  Each policy names what it matches (``model``: a glob on the request's
``model``; ``route``: the name the Envoy route passes in the ``x-semantic-cache-route`` gRPC
metadata) and the settings it changes; the first policy whose every matcher matches applies,
the rest comes from the defaults (the ``semantic_cache`` section).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any, TypeVar

from extproc.config.checks import KeySpec, check_section, int_range, one_of, seconds, unit_interval
from extproc.config.verification import false_hit_bound

ROUTE_METADATA = "x-semantic-cache-route"
"""The gRPC initial-metadata key an Envoy route sets (ExtProcPerRoute overrides) to name itself."""

POLICY_KEYS: KeySpec = {
    "enabled": (bool, "true or false", None),
    "similarity_threshold": ((int, float), "a number", unit_interval),
    "min_confidence": ((int, float), "a number (a probability)", unit_interval),
    "ttl_seconds": (int, "an integer (seconds, 0 = never expire)", seconds),
    "max_ttl_seconds": (int, "an integer (seconds, 0 = ignore x-semantic-cache-ttl)", seconds),
    "volatile_detection": (bool, "true or false", None),
    "volatile_ttl_seconds": (int, "an integer (seconds, 0 = never cache them)", seconds),
    "scope_mode": (str, "a string", one_of("global", "header", "authorization")),
    "max_response_bytes": (int, "an integer (bytes)", int_range(1024)),
    "max_false_hit_rate": ((int, float), "a number (a rate)", false_hit_bound),
}
"""The settings a policy may change: those that make sense per kind of traffic."""
NESTED_KEYS = {"max_false_hit_rate": "verification"}
"""Policy keys that live in a section of the settings (``verification.max_false_hit_rate``)."""

S = TypeVar("S")
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


@dataclass(frozen=True)
class Policy:
    """One entry of ``policies:``: what it matches and the settings it changes."""

    name: str
    model: str | None = None
    """A glob (``codellama-*``) on the request's ``model``; None matches every model."""
    route: str | None = None
    """The route name Envoy passes; None matches every route (and requests without one)."""
    overrides: tuple[tuple[str, Any], ...] = ()

    def matches(self, route: str, model: str | None) -> bool:
        """True when every matcher matches (``model`` None: not known yet, so a model glob fails)."""
        if self.route is not None and self.route != route:
            return False
        return self.model is None or (model is not None and fnmatchcase(model, self.model))

    def describe(self) -> dict[str, Any]:
        """The policy as ``admin stats`` shows it."""
        match = {k: v for k, v in (("model", self.model), ("route", self.route)) if v is not None}
        return {"name": self.name, "match": match, "settings": dict(self.overrides)}


def parse_policies(raw: Any, errors: list[str]) -> tuple[Policy, ...]:
    """Check the ``policies:`` list; append one precise message per problem to ``errors``."""
    if not isinstance(raw, list):
        errors.append("semantic_cache.policies: must be a list of {match: {...}, <setting>: value} mappings")
        return ()
    out: list[Policy] = []
    names: set[str] = set()
    written = {item["name"] for item in raw if isinstance(item, dict) and isinstance(item.get("name"), str)}
    for i, item in enumerate(raw):
        path = f"semantic_cache.policies[{i}]"
        if not isinstance(item, dict):
            errors.append(
                f"{path}: must be a mapping such as {{match: {{model: 'codellama-*'}}, ttl_seconds: 60}}"
            )
            continue
        before = len(errors)
        model, route = _matchers(item.get("match"), path, errors)
        name = item["name"] if "name" in item else _default_name(i, written)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            errors.append(f"{path}.name: must be 1-64 letters, digits or _.:-, got {name!r}")
        elif name in names:
            errors.append(f"{path}.name: {name!r} is already the name of an earlier policy")
        names.add(str(name))
        settings = {k: v for k, v in item.items() if k not in ("match", "name")}
        if not settings:
            errors.append(f"{path}: changes no setting; add one of {', '.join(sorted(POLICY_KEYS))}")
        values = check_section(settings, POLICY_KEYS, path, errors)
        if len(errors) == before:
            out.append(Policy(str(name), model, route, tuple(sorted(values.items()))))
    return tuple(out)


def _default_name(index: int, written: set[str]) -> str:
    """``policy<index>``, unless a policy is named so in the file: then ``policy<index>.2``…"""
    name, n = f"policy{index}", 1
    while name in written:
        n += 1
        name = f"policy{index}.{n}"
    return name


def _matchers(match: Any, path: str, errors: list[str]) -> tuple[str | None, str | None]:
    if not isinstance(match, dict) or not match:
        errors.append(f"{path}.match: required, a mapping with model (a glob) and/or route (a name)")
        return None, None
    for key in sorted(set(match) - {"model", "route"}):
        errors.append(f"{path}.match.{key}: unknown matcher; use model (a glob) or route (a route name)")
    found: dict[str, str | None] = {"model": None, "route": None}
    for key in ("model", "route"):
        value = match.get(key)
        if key not in match:
            continue
        if not isinstance(value, str) or not value.strip():  # `model:` left empty is null
            errors.append(f"{path}.match.{key}: must be a non-empty string, got {value!r}")
        elif key == "route" and not _NAME.fullmatch(value):
            errors.append(f"{path}.match.route: must be 1-64 letters, digits or _.:-, got {value!r}")
        else:
            found[key] = value
    return found["model"], found["route"]


def find_policy(policies: tuple[Policy, ...], route: str, model: str | None) -> Policy | None:
    """The first policy matching ``route`` and ``model``, else None (the defaults apply)."""
    return next((p for p in policies if p.matches(route, model)), None)


def route_policies(policies: tuple[Policy, ...], route: str) -> tuple[Policy | None, ...]:
    """Every policy a request on ``route`` may fall under once its model is known, in order: the
    route's model policies up to its first model-free one, then that one (None: the defaults)."""
    out: list[Policy | None] = []
    for p in policies:
        if p.route is None or p.route == route:
            out.append(p)
            if p.model is None:
                return tuple(out)
    out.append(None)
    return tuple(out)


_APPLIED: dict[tuple[int, str], tuple[Any, Any]] = {}
"""(id(settings), policy name) -> (settings, settings with the policy): built once per pair."""


def with_policy(settings: S, policy: Policy | None) -> S:
    """``settings`` with ``policy``'s changes, built once per (settings, policy).

    Keyed by identity, not by hash: settings hold mappings (the Milvus section) and are
    replaced as a whole on a live change, so a new object is a new key.
    """
    if policy is None:
        return settings
    key = (id(settings), policy.name)
    hit = _APPLIED.get(key)
    if hit is not None and hit[0] is settings:
        return hit[1]  # type: ignore[no-any-return]
    if len(_APPLIED) > 256:  # old settings objects after live changes: start over
        _APPLIED.clear()
    flat = {k: v for k, v in policy.overrides if k not in NESTED_KEYS}
    for name, value in policy.overrides:
        if name in NESTED_KEYS:
            section = NESTED_KEYS[name]
            flat[section] = replace(flat.get(section, getattr(settings, section)), **{name: value})
    applied = replace(settings, **flat)  # type: ignore[type-var]
    _APPLIED[key] = (settings, applied)
    return applied
