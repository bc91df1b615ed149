"""Fixtures of the chart tests: the chart with its milvus dependency, and every preset rendered.

The dependency is the official milvus chart archive when ../shared/charts has it, else the test
double in fixtures/milvus-stub (a bare clone); ``real_chart`` is the former or a skip.

Session-scoped: tests/test_chart.py had them module-scoped, i.e. built once for all the chart tests;
now that the tests span several modules, session scope keeps them built once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import helm_python as helm
import pytest

from .helpers import CHART, FIXTURES, MILVUS_ARCHIVE, NO_ARCHIVE, PRESETS, Rendered, helm_render, to_rendered


def _chart_copy(tmp_path_factory: pytest.TempPathFactory, real: bool) -> Path:
    """A copy of the chart with a milvus archive in charts/, where ``helm dependency build``
    puts it (charts/milvus-<version>.tgz): the official one, or the test double packaged."""
    target = tmp_path_factory.mktemp("chart") / "semantic-cache"
    shutil.copytree(CHART, target, ignore=shutil.ignore_patterns("charts"))
    (target / "charts").mkdir()
    if real:
        shutil.copy(MILVUS_ARCHIVE, target / "charts")
    else:
        helm.package(FIXTURES / "milvus-stub", destination=target / "charts")
    return target


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart with the official milvus chart when available, else with the test double."""
    return _chart_copy(tmp_path_factory, real=MILVUS_ARCHIVE.is_file())


@pytest.fixture(scope="session")
def real_chart(chart_dir: Path) -> Path:
    """The chart with the official milvus chart (skips without the archive)."""
    if not MILVUS_ARCHIVE.is_file():
        pytest.skip(NO_ARCHIVE)
    return chart_dir


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
