"""Fixtures of the chart tests: the chart with its test-double dependency, and every preset rendered.

Session-scoped: tests/test_chart.py had them module-scoped, i.e. built once for all the chart tests;
now that the tests span several modules, session scope keeps them built once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import helm_python as helm
import pytest

from .helpers import CHART, FIXTURES, PRESETS, Rendered, helm_render, to_rendered


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart with the milvus test double packaged into charts/, as
    ``helm dependency build`` leaves the real one (charts/milvus-<version>.tgz)."""
    target = tmp_path_factory.mktemp("chart") / "semantic-cache"
    shutil.copytree(CHART, target, ignore=shutil.ignore_patterns("charts"))
    (target / "charts").mkdir()
    helm.package(FIXTURES / "milvus-stub", destination=target / "charts")
    return target


@pytest.fixture(scope="session")
def chart(chart_dir: Path) -> Path:
    """The chart (with the dependency) to render."""
    return chart_dir


@pytest.fixture(scope="session")
def rendered(chart: Path) -> dict[str, Rendered]:
    """Every preset, rendered once."""
    return {
        name: to_rendered(helm_render(chart, p.values, api_versions=p.api_versions))
        for name, p in PRESETS.items()
    }
