"""Tests of the Helm chart (charts/semantic-cache), rendered by the real Helm engine; no cluster needed.

For every install preset: lint, render, validate each object (built-in kinds with
kubernetes-validate --strict for Kubernetes 1.27 and the newest schemas; Milvus and ServiceMonitor
with the small schemas in tests/chart/fixtures/schemas), check the names, labels, mounts and
environment the runbook and the processor rely on, run the real ``envoy --mode validate`` on the
rendered Envoy config and ``semantic-cache check-config`` on the rendered config.yaml with the
rendered milvus.yaml at the path it names.

The milvus chart (a declared dependency) cannot be downloaded here: the renders use a copy of the
chart with the official archive ../shared/charts/milvus-<version>.tgz in its charts/ (where
`helm dependency build` puts it), so Milvus's own objects are rendered and validated too. On a bare
clone, without that archive, tests/chart/fixtures/milvus-stub is packaged there instead (a test
double of the Service name, port and pod labels only) and test_real_milvus.py skips with the reason.
One test renders the chart without any dependency present.
"""
