# embedq images. Two targets from one file:
#   worker (the default, last stage): CPU-only torch, the model baked in at build time
#     docker build -t embedq-worker --build-arg MODEL=intfloat/multilingual-e5-large .
#   producer: no torch; runs the RQ bulk worker and the example API
#     docker build -t embedq-producer --target producer .
FROM python:3.11-slim AS base
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


FROM base AS worker
ARG MODEL=intfloat/multilingual-e5-large
ENV HF_HOME=/opt/hf
# CPU wheel of torch from PyTorch's own index: the PyPI wheel for Linux is the multi-GB CUDA build.
# Installed before the code is copied, so a code change does not download torch again.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY producer ./producer
COPY worker ./worker
RUN pip install '.[worker]'

# Fetch the model now so the container starts offline.
RUN python -c "import sys; from sentence_transformers import SentenceTransformer; SentenceTransformer(sys.argv[1])" "$MODEL" \
    && chmod -R a+rX "$HF_HOME"

USER embedq
ENV HF_HUB_OFFLINE=1 \
    EMBEDDING_MODEL=$MODEL \
    EMBED_THREADS=2 \
    EMBED_DEVICE=cpu \
    EMBED_METRICS_PORT=9100
EXPOSE 9100
# Fresh heartbeat of this container's worker (ids default to hostname-pid).
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 CMD ["embedq-worker", "health"]
CMD ["embedq-worker"]
