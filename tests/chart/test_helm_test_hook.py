"""The `helm test` hook pod: rendered and validated in every preset, pointed at the release's own
Services, selected by none of them (the script itself runs against real processes in
tests/integration/test_helm_test_script.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import NS, PRESETS, RELEASE, Rendered, _matches, render, validate_object

TEST_POD = f"{RELEASE}-test-miss-then-hit"


@pytest.mark.parametrize("preset", PRESETS)
def test_hook_pod_in_every_preset(rendered: dict[str, Rendered], preset: str) -> None:
    r = rendered[preset]
    pod = r.one("Pod", TEST_POD)
    validate_object(pod)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == r.container("processor")["image"]
    assert container["securityContext"] == r.container("processor")["securityContext"]
    compile(container["args"][0], "helm-test.py", "exec")
    env = {e["name"]: e["value"] for e in container["env"]}
    http, metrics = r.one("Service", RELEASE), r.one("Service", f"{RELEASE}-metrics")
    assert env["CHAT_URL"] == (
        f"http://{RELEASE}.{NS}.svc.cluster.local:{http['spec']['ports'][0]['port']}/v1/chat/completions"
    )
    assert env["READY_URL"] == (
        f"http://{RELEASE}-metrics.{NS}.svc.cluster.local:{metrics['spec']['ports'][0]['port']}/readyz"
    )
    assert env["SCOPE_MODE"] == r.env("processor")["SEMANTIC_CACHE_SCOPE_MODE"]
    # Never an endpoint of the router's Services, counted by its PDB or let in to Milvus.
    labels = pod["metadata"]["labels"]
    for service in r.all("Service"):
        assert not _matches({"matchLabels": service["spec"]["selector"]}, labels), service["metadata"]["name"]
    for pdb in r.all("PodDisruptionBudget"):
        assert not _matches(pdb["spec"]["selector"], labels)
    for policy in r.all("NetworkPolicy"):
        for rule in policy["spec"]["ingress"]:
            for peer in rule.get("from", []):
                if (
                    peer.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                    == RELEASE
                ):
                    assert not _matches(peer["podSelector"], labels)


def test_hook_pod_values(chart: Path) -> None:
    values = {
        "upstream": {"servedModelName": "Qwen/Qwen2.5-7B-Instruct"},
        "service": {"port": 80},
        "scope": {"mode": "header", "header": "x-org"},
        "helmTest": {"readyTimeoutSeconds": 300, "hitAttempts": 5},
    }
    (container,) = render(chart, values).one("Pod", TEST_POD)["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODEL"] == "Qwen/Qwen2.5-7B-Instruct"
    assert env["CHAT_URL"].endswith(".svc.cluster.local:80/v1/chat/completions")
    assert (env["SCOPE_MODE"], env["SCOPE_HEADER"], env["TRUST_CLIENT_HEADER"]) == (
        "header",
        "x-org",
        "false",
    )
    assert (env["READY_TIMEOUT_SECONDS"], env["HIT_ATTEMPTS"]) == ("300", "5")
    overridden = render(chart, {"helmTest": {"model": "small"}, "upstream": {"servedModelName": "big"}})
    (container,) = overridden.one("Pod", TEST_POD)["spec"]["containers"]
    assert {"name": "MODEL", "value": "small"} in container["env"]
    assert f"helm test {RELEASE} -n {NS} --logs" in overridden.notes
    disabled = render(chart, {"helmTest": {"enabled": False}})
    assert not disabled.all("Pod") and "helm test" not in disabled.notes
