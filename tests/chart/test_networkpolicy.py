"""NetworkPolicy."""

from __future__ import annotations

from pathlib import Path

from .helpers import NS, PRESETS, RELEASE, Doc, Rendered, _matches, deep_merge, render, validate_object


def np_allows(
    policy: Doc, namespaces: dict[str, dict[str, str]], src_ns: str, src: dict[str, str], port: int
) -> bool:
    """Does ``policy`` (matchLabels selectors only) admit a TCP connection from pod ``src`` in ``src_ns``?"""
    own_ns = policy["metadata"]["namespace"]
    for rule in policy["spec"]["ingress"]:
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        for peer in rule.get("from", []):
            ns_ok = (
                _matches(peer["namespaceSelector"], namespaces[src_ns])
                if "namespaceSelector" in peer
                else src_ns == own_ns
            )
            pod_ok = _matches(peer["podSelector"], src) if "podSelector" in peer else True
            if ns_ok and pod_ok:
                return True
    return False


def test_network_policy_allows_only_the_router_to_milvus(rendered: dict[str, Rendered]) -> None:
    r = rendered["networkpolicy"]
    policy = r.one("NetworkPolicy", "allow-router-to-milvus")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # It protects the Milvus pods (the dependency's proxy here), not etcd / MinIO / Pulsar.
    proxy = r.one("Deployment", f"{RELEASE}-milvus-proxy")["spec"]["template"]["metadata"]["labels"]
    assert _matches(policy["spec"]["podSelector"], proxy)
    assert not _matches(policy["spec"]["podSelector"], {"app.kubernetes.io/name": "etcd"})
    namespaces = {
        NS: {"kubernetes.io/metadata.name": NS},
        "other": {"kubernetes.io/metadata.name": "other"},
        "monitoring": {"kubernetes.io/metadata.name": "monitoring"},
    }
    router = r.pod["metadata"]["labels"]
    querynode = {"app.kubernetes.io/name": "milvus", "component": "querynode"}
    cases = [
        (NS, router, 19530, True),  # the router -> Milvus
        (NS, {"app": "other"}, 19530, False),  # another app in the namespace
        ("other", router, 19530, False),  # a look-alike in another namespace
        (NS, querynode, 19530, True),  # Milvus components among themselves...
        (NS, querynode, 21123, True),  # ...on any port (cluster mode)
        ("monitoring", {"app.kubernetes.io/name": "prometheus"}, 9091, True),  # metrics scraping
        ("monitoring", {"app.kubernetes.io/name": "prometheus"}, 19530, False),
    ]
    for src_ns, labels, port, allowed in cases:
        assert np_allows(policy, namespaces, src_ns, labels, port) is allowed, (src_ns, labels, port)


def test_network_policy_is_opt_in(rendered: dict[str, Rendered]) -> None:
    assert not rendered["bundled-cluster"].all("NetworkPolicy")


def test_network_policy_lets_the_milvus_operator_in(chart: Path) -> None:
    values = deep_merge(PRESETS["operator-cluster"].values, {"networkPolicy": {"enabled": True}})
    r = render(chart, values, api_versions=PRESETS["operator-cluster"].api_versions)
    policy = r.one("NetworkPolicy", "allow-router-to-milvus")
    validate_object(policy)
    namespaces = {
        "milvus-operator": {"kubernetes.io/metadata.name": "milvus-operator"},
        "other": {"kubernetes.io/metadata.name": "other"},
    }
    operator = {"app.kubernetes.io/name": "milvus-operator"}
    assert np_allows(policy, namespaces, "milvus-operator", operator, 19530)
    assert not np_allows(policy, namespaces, "other", operator, 19530)
