# embedq images. Targets from one file:
#   worker (the default, last stage): torch-free; serves the model exported at build time on
#     ONNX Runtime (EMBED_BACKEND=onnx; openvino with the openvino extra), same vectors as torch
#     docker build -t embedq-worker --build-arg MODEL=intfloat/multilingual-e5-large .
#   worker-torch: the same model on sentence-transformers (CPU torch), for models the export
#     does not handle
#     docker build -t embedq-worker-torch --target worker-torch .
#   producer: no torch; runs the RQ bulk worker and the example API
#     docker build -t embedq-producer --target producer .
# Base pinned to a patch release and Debian suite (a rebuild gets the same Python); pin a digest
# (python:3.11.11-slim-bookworm@sha256:...) in your registry for byte-identical rebuilds.
FROM python:3.11.11-slim-bookworm AS base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
RUN useradd --system --uid 10001 --no-create-home embedq


FROM base AS producer
COPY pyproject.toml README.md ./
COPY producer ./producer
COPY worker ./worker
COPY examples ./examples
RUN pip install '.[bulk,api]'
USER embedq
# Bulk jobs: inputs and outputs live on a volume both the submitter and this worker see.
CMD ["embedq", "bulk", "worker"]


# torch (CPU wheel from PyTorch's own index: the PyPI wheel for Linux is the multi-GB CUDA build),
# installed before the code is copied, so a code change does not download torch again.
FROM base AS torch
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY producer ./producer
COPY worker ./worker


# Build stage: fetch the model and export it; the export checks itself against torch.
FROM torch AS export
ARG MODEL=intfloat/multilingual-e5-large
ENV HF_HOME=/opt/hf
RUN pip install '.[export]' \
    && embedq-worker export "$MODEL" --out /opt/model \
    && chmod -R a+rX /opt/model


FROM torch AS worker-torch
ARG MODEL=intfloat/multilingual-e5-large
ENV HF_HOME=/opt/hf
RUN pip install '.[worker,torch]'
# Fetch the model now so the container starts offline.
RUN python -c "import sys; from sentence_transformers import SentenceTransformer; SentenceTransformer(sys.argv[1])" "$MODEL" \
    && chmod -R a+rX "$HF_HOME"
USER embedq
ENV HF_HUB_OFFLINE=1 \
    EMBEDDING_MODEL=$MODEL \
    EMBED_SERVED_NAME=$MODEL \
    EMBED_BACKEND=torch \
    EMBED_THREADS=2 \
    EMBED_DEVICE=cpu \
    EMBED_METRICS_PORT=9100 \
    EMBED_ALIVE_FILE=/tmp/embedq-worker.alive
EXPOSE 9100
# Liveness of the loop itself (not Redis: an outage must not restart every worker at once).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["embedq-worker", "health", "--live"]
CMD ["embedq-worker"]


# The default image: no torch, no sentence-transformers; the export from the build stage.
FROM base AS worker
ARG MODEL=intfloat/multilingual-e5-large
COPY pyproject.toml README.md ./
COPY producer ./producer
COPY worker ./worker
RUN pip install '.[worker]'
COPY --from=export /opt/model /opt/model
USER embedq
ENV EMBEDDING_MODEL=/opt/model \
    EMBED_SERVED_NAME=$MODEL \
    EMBED_BACKEND=onnx \
    EMBED_THREADS=2 \
    EMBED_METRICS_PORT=9100 \
    EMBED_ALIVE_FILE=/tmp/embedq-worker.alive
EXPOSE 9100
# Liveness of the loop itself (not Redis: an outage must not restart every worker at once);
# `embedq-worker health` (a fresh heartbeat in Redis) is the readiness check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["embedq-worker", "health", "--live"]
CMD ["embedq-worker"]
