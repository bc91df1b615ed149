"""The PrometheusRule: rendered only where its API is served (or forced), checked and unit-tested by
Prometheus's own ``promtool`` (one case per alert that fires and one that stays quiet, in
fixtures/alerts.tests.yaml). The promtool tests skip with the reason when it is not installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import FIXTURES, NS, RELEASE, Doc, Rendered, render, validate_object

PROMTOOL = shutil.which("promtool")
NO_PROMTOOL = (
    "promtool is not installed (Debian: apt-get install prometheus; it ships promtool); .ci/run installs it"
)
CASES: list[Doc] = yaml.safe_load((FIXTURES / "alerts.tests.yaml").read_text())["cases"]
ENABLED: Doc = {"metrics": {"prometheusRule": {"enabled": True}}}


def rule_of(r: Rendered) -> Doc:
    """The one PrometheusRule of a render."""
    (rule,) = r.all("PrometheusRule")
    return rule


def alerts(rule: Doc) -> dict[str, Doc]:
    """alert name -> rule."""
    return {a["alert"]: a for g in rule["spec"]["groups"] for a in g["rules"]}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run promtool (skips when it is missing)."""
    if PROMTOOL is None:
        pytest.skip(NO_PROMTOOL)
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def rules_dir(chart: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rendered rule groups as a Prometheus rule file, rules.yaml."""
    rule = rule_of(render(chart, ENABLED, api_versions=("monitoring.coreos.com/v1",)))
    folder = tmp_path_factory.mktemp("rules")
    (folder / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return folder


@pytest.mark.parametrize(
    ("values", "api", "expected"),
    [
        ({}, True, False),  # off by default
        (ENABLED, False, False),  # no Prometheus Operator: nothing that would fail the install
        (ENABLED, True, True),
        ({"metrics": {"prometheusRule": {"enabled": True, "force": True}}}, False, True),
    ],
)
def test_rule_only_where_the_api_exists(chart: Path, values: Doc, api: bool, expected: bool) -> None:
    r = render(chart, values, api_versions=("monitoring.coreos.com/v1",) if api else ())
    assert bool(r.all("PrometheusRule")) is expected
    assert ("No PrometheusRule was created" in r.notes) is (values == ENABLED and not api)
    if expected:
        rule = rule_of(r)
        validate_object(rule)
        assert rule["metadata"]["namespace"] == NS


def test_rule_reads_this_release_only_and_links_the_docs(chart: Path) -> None:
    values: Doc = {
        "metrics": {
            "prometheusRule": {
                "enabled": True,
                "force": True,
                "labels": {"release": "kube-prometheus-stack"},
                "runbookUrl": "https://docs.example.com/semantic-cache/alerts",
                "thresholds": {"bypassRatio": 0.35},
            }
        }
    }
    rule = rule_of(render(chart, values))
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    found = alerts(rule)
    assert set(found) == {c["alert"] for c in CASES}
    for name, alert in found.items():
        assert alert["annotations"]["runbook_url"] == (
            f"https://docs.example.com/semantic-cache/alerts#{name.lower()}"
        )
        assert f'namespace="{NS}"' in alert["expr"]
        assert alert["labels"] == {"severity": "warning", "namespace": NS}
        if name != "SemanticCacheProcessorRestarting":  # kube-state-metrics' series
            # Every series the rule reads is this release's (absent() and both sides of "or" too).
            assert alert["expr"].count("{") == alert["expr"].count(f'job="{RELEASE}-metrics"'), name
    assert "> 0.35" in found["SemanticCacheBypassRatioHigh"]["expr"]
    assert "35%" in found["SemanticCacheBypassRatioHigh"]["annotations"]["description"]
    custom = render(
        chart, {"metrics": {"prometheusRule": {"enabled": True, "force": True, "selector": 'app="x"'}}}
    )
    assert all('{app="x"' in a["expr"] for n, a in alerts(rule_of(custom)).items() if "Restarting" not in n)


def test_every_alert_has_a_case_that_fires_and_one_that_stays_quiet(rules_dir: Path) -> None:
    rendered = {
        a["alert"]
        for g in yaml.safe_load((rules_dir / "rules.yaml").read_text())["groups"]
        for a in g["rules"]
    }
    for name in rendered:
        kinds = {bool(c["exp_alerts"]) for c in CASES if c["alert"] == name}
        assert kinds == {True, False}, f"{name}: needs a firing and a quiet case"
    assert {c["alert"] for c in CASES} <= rendered


def test_promtool_check_rules(rules_dir: Path) -> None:
    result = promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len({c['alert'] for c in CASES})} rules found" in result.stdout


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_promtool_alert_case(rules_dir: Path, case: Doc) -> None:
    test: dict[str, Any] = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": case["input_series"],
                "alert_rule_test": [
                    {
                        "eval_time": case["eval_time"],
                        "alertname": case["alert"],
                        "exp_alerts": case["exp_alerts"],
                    }
                ],
            }
        ],
    }
    name = "case-" + "".join(ch if ch.isalnum() else "-" for ch in case["name"]) + ".yaml"
    (rules_dir / name).write_text(yaml.safe_dump(test, sort_keys=False))
    result = promtool("test", "rules", name, cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
