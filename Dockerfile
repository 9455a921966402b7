# The embedq worker image: CPU-only torch, the model baked in at build time, a non-root user.
#   docker build -t embedq-worker --build-arg MODEL=intfloat/multilingual-e5-large .
FROM python:3.11-slim

ARG MODEL=intfloat/multilingual-e5-large
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/opt/hf

# CPU wheel of torch from PyTorch's own index: the PyPI wheel for Linux is the multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /app
COPY pyproject.toml README.md ./
COPY producer ./producer
COPY worker ./worker
RUN pip install '.[worker]'

# Fetch the model now so the container starts offline.
RUN python -c "import sys; from sentence_transformers import SentenceTransformer; SentenceTransformer(sys.argv[1])" "$MODEL" \
    && chmod -R a+rX "$HF_HOME"

RUN useradd --system --uid 10001 --no-create-home embedq
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
