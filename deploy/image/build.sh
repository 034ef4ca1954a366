#!/usr/bin/env bash
# Build the multi-arch image (`make image`): docker buildx when it is there, else buildah,
# else podman. Same Dockerfile for every arch.
#
#   deploy/image/build.sh [extra builder args...]
#
# Environment (all optional):
#   IMAGE_NAME       image / manifest list name           (edge-inference:latest)
#   IMAGE_PLATFORMS  comma-separated platforms             (linux/amd64,linux/arm64)
#   IMAGE_OUTPUT     local | push | oci                    (local)
#                      local: buildx --load (one platform) or an OCI archive (several);
#                             buildah/podman: a manifest list in local storage
#                      push:  push every arch to the registry in IMAGE_NAME
#                      oci:   also write build/edge-inference.oci.tar (IMAGE_ARCHIVE)
#   IMAGE_BUILDER    docker | buildah | podman             (first found, in that order)
#   IMAGE_CONTEXT    build context                         (the repo root)
#   BASE_IMAGE       runtime base                          (Dockerfile default)
#   MODELS_FROM      build | context                       (build: models built in the image)
#   MODELS           models to build when MODELS_FROM=build (Dockerfile default: all)
#   PIP_CA_BUNDLE    a CA bundle pip inside the build must trust (TLS-inspecting proxy):
#                    mounted read-only into RUN steps (buildah/podman) and passed as PIP_CERT
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
IMAGE=${IMAGE_NAME:-edge-inference:latest}
PLATFORMS=${IMAGE_PLATFORMS:-linux/amd64,linux/arm64}
OUTPUT=${IMAGE_OUTPUT:-local}
CONTEXT=${IMAGE_CONTEXT:-$ROOT}
DOCKERFILE=$CONTEXT/Dockerfile
[[ -f $DOCKERFILE ]] || DOCKERFILE=$ROOT/Dockerfile
ARCHIVE=${IMAGE_ARCHIVE:-$ROOT/build/edge-inference.oci.tar}

builder=${IMAGE_BUILDER:-}
if [[ -z $builder ]]; then
    if command -v docker >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then
        builder=docker
    elif command -v buildah >/dev/null 2>&1; then
        builder=buildah
    elif command -v podman >/dev/null 2>&1; then
        builder=podman
    else
        echo "build.sh: need docker buildx, buildah or podman" >&2
        exit 1
    fi
fi

args=(
    --build-arg "VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)"
    --build-arg "VCS_REF=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    --build-arg "BUILD_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
)
[[ -n ${BASE_IMAGE:-} ]] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
# Always explicit: older buildah skips stages by the build args given, not ARG defaults.
args+=(--build-arg "MODELS_FROM=${MODELS_FROM:-build}")
[[ -n ${MODELS:-} ]] && args+=(--build-arg "MODELS=$MODELS")
if [[ -n ${PIP_CA_BUNDLE:-} ]]; then
    [[ -r $PIP_CA_BUNDLE ]] || { echo "build.sh: cannot read PIP_CA_BUNDLE=$PIP_CA_BUNDLE" >&2; exit 1; }
    args+=(--build-arg PIP_CERT=/etc/ssl/certs/extra-ca.crt)
fi

set -x
case $builder in
docker)
    [[ -n ${PIP_CA_BUNDLE:-} ]] && { echo "build.sh: PIP_CA_BUNDLE is for buildah/podman builds" >&2; exit 1; }
    out=()
    case $OUTPUT in
        push) out=(--push) ;;
        oci)  mkdir -p "$(dirname "$ARCHIVE")"; out=(--output "type=oci,dest=$ARCHIVE") ;;
        local)
            if [[ $PLATFORMS == *,* ]]; then
                mkdir -p "$(dirname "$ARCHIVE")"; out=(--output "type=oci,dest=$ARCHIVE")
            else
                out=(--load)
            fi ;;
    esac
    docker buildx build --platform "$PLATFORMS" -t "$IMAGE" -f "$DOCKERFILE" "${args[@]}" \
        "${out[@]}" "$@" "$CONTEXT"
    ;;
buildah|podman)
    vol=()
    [[ -n ${PIP_CA_BUNDLE:-} ]] && vol=(-v "$PIP_CA_BUNDLE:/etc/ssl/certs/extra-ca.crt:ro")
    if [[ ${MODELS_FROM:-build} == build && $PLATFORMS == *arm64* && $(uname -m) != aarch64 ]]; then
        # Older buildah (Debian 12's 1.28) leaves BUILDPLATFORM empty, so the models-build
        # stage runs on each target platform: for arm64 that is torch under emulation.
        echo "build.sh: note: MODELS_FROM=build may train and quantize under emulation here;" \
             "MODELS_FROM=context (after \`make models\`) is much faster" >&2
    fi
    # A manifest list of the same name would collect the new images next to the old ones
    # (and an image of that name, e.g. from `podman load`, would block the list).
    "$builder" manifest rm "$IMAGE" >/dev/null 2>&1 || "$builder" rmi "$IMAGE" >/dev/null 2>&1 || true
    if [[ $builder == buildah ]]; then
        cmd=(buildah bud --isolation "${BUILDAH_ISOLATION:-chroot}")
    else
        cmd=(podman build)
    fi
    # docker format: OCI image configs have no HEALTHCHECK
    "${cmd[@]}" --layers --format docker --platform "$PLATFORMS" --manifest "$IMAGE" \
        -f "$DOCKERFILE" "${vol[@]}" "${args[@]}" "$@" "$CONTEXT"
    # --format v2s2 keeps the HEALTHCHECK, which OCI image configs cannot carry
    case $OUTPUT in
        push) "$builder" manifest push --all --format v2s2 "$IMAGE" "docker://$IMAGE" ;;
        oci)  mkdir -p "$(dirname "$ARCHIVE")"; rm -f "$ARCHIVE"
              "$builder" manifest push --all --format v2s2 "$IMAGE" "oci-archive:$ARCHIVE:$IMAGE" ;;
        local) ;;
    esac
    ;;
*)
    echo "build.sh: unknown IMAGE_BUILDER=$builder" >&2; exit 1 ;;
esac
