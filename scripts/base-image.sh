#!/usr/bin/env bash
# Make the local base image vllm-nginx/base:bookworm once.
#
#   scripts/base-image.sh                 # make the image unless `docker image inspect` finds it
#   scripts/base-image.sh --force         # throw away the cached rootfs and the image, make both again
#   scripts/base-image.sh --monitoring    # the monitoring image instead (see below); --force too
#   scripts/base-image.sh --keepalived    # the standby balancers' VRRP image (see below); --force too
#
# Why: no container registry is reachable here, so `FROM nginx` / `FROM python`
# cannot work. The images of this project (the nginx load balancer and the vLLM
# stand-in) start from this image instead: a minimal Debian bookworm made with
# debootstrap from the Debian mirror this machine's apt already uses (read from apt
# at run time, never written down here), then `docker import`ed.
#
# The rootfs tarball is cached under /var/cache/vllm-nginx/ (name carries a hash of
# the suite and package list), so after `docker image rm` or a fresh engine the image
# comes back in seconds instead of a full debootstrap. A lock makes concurrent runs
# (two test sessions, a CI job and a developer) wait for each other instead of
# debootstrapping twice into the same directory.
set -euo pipefail

SUITE=bookworm
# libnginx-mod-http-js: njs, for the load balancer's prefix_affinity policy.
PACKAGES="python3,python3-starlette,python3-uvicorn,nginx-light,libnginx-mod-http-js,curl,ca-certificates"
CACHE_DIR="${VLLM_NGINX_CACHE_DIR:-/var/cache/vllm-nginx}"

log() { printf 'base-image: %s\n' "$*" >&2; }

FORCE=0
MONITORING=0
KEEPALIVED=0
for arg in "$@"; do
    case "$arg" in
    --force) FORCE=1 ;;
    --monitoring) MONITORING=1 ;;
    --keepalived) KEEPALIVED=1 ;;
    *)
        echo "usage: $0 [--force] [--monitoring | --keepalived]" >&2
        exit 2
        ;;
    esac
done

# The monitoring image: the same base plus Debian's Prometheus (2.42), which plays
# prom/prometheus in the offline tests (no registry here to pull the official one).
# A separate image and rootfs, so the base image's cache key and contents stay as
# they are; its own key follows from its own package list.
# The keepalived image: the same base plus Debian's keepalived (2.2.7), the VRRP daemon
# of the standby balancers (docs/multi-host.md); curl, already in the base, is its check.
if ((MONITORING)); then
    TAG="${MONITORING_IMAGE_TAG:-vllm-nginx/monitoring:bookworm}"
    PACKAGES="$PACKAGES,prometheus"
elif ((KEEPALIVED)); then
    TAG="${KEEPALIVED_IMAGE_TAG:-vllm-nginx/keepalived:bookworm}"
    PACKAGES="$PACKAGES,keepalived"
else
    TAG="${BASE_IMAGE_TAG:-vllm-nginx/base:bookworm}"
fi

# debootstrap, apt-get and the cache under /var/cache need root: as root the script
# runs as it is; as another user it runs itself again through sudo (as scripts/test.sh
# does with its root-only steps), keeping the variables that configure it.
if [[ $EUID -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        log "debootstrap and the rootfs cache need root: run as root, or install and set up sudo"
        exit 1
    fi
    log "not root: running again through sudo"
    exec sudo --preserve-env=BASE_IMAGE_TAG,MONITORING_IMAGE_TAG,KEEPALIVED_IMAGE_TAG,VLLM_NGINX_CACHE_DIR,DOCKER_HOST,http_proxy,https_proxy,no_proxy \
        bash "$0" "$@"
fi
if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    log "no Docker engine answers; run scripts/docker-engine.sh start first"
    exit 1
fi

mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/base-image.lock"
if ! flock -n 9; then
    log "another run holds $CACHE_DIR/base-image.lock; waiting for it"
    flock 9
fi

KEY="$(printf '%s %s %s\n' "$SUITE" "$PACKAGES" "minbase" | sha256sum | cut -c1-12)"
TARBALL="$CACHE_DIR/base-$SUITE-$KEY.tar"

if ((FORCE)); then
    log "--force: removing $TARBALL and image $TAG"
    rm -f "$TARBALL"
    docker image rm "$TAG" >/dev/null 2>&1 || true
fi

if docker image inspect "$TAG" >/dev/null 2>&1; then
    log "image $TAG exists; nothing to do"
    exit 0
fi

mirror_uri() {
    # The URI apt itself fetches $SUITE/main from: works for both sources.list and
    # deb822 .sources files, and for any mirror or snapshot the machine is set up with.
    apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Identifier: Packages' |
        awk -v suite="$SUITE" '$2 == suite && $3 == "main" { print $1; exit }'
}

if [[ ! -s "$TARBALL" ]]; then
    if ! command -v debootstrap >/dev/null 2>&1; then
        log "installing debootstrap (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >&2
    fi
    MIRROR="$(mirror_uri)"
    if [[ -z "$MIRROR" ]]; then
        log "apt knows no mirror for $SUITE main (apt-get update run?); cannot debootstrap"
        exit 1
    fi
    ROOTFS="$CACHE_DIR/rootfs-$SUITE-$KEY.tmp"
    rm -rf "$ROOTFS"
    log "debootstrap --variant=minbase $SUITE from the machine's apt mirror (packages: $PACKAGES)"
    start=$SECONDS
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >&2
    log "debootstrap took $((SECONDS - start))s"
    # Package caches and lists only make the image bigger; apt-get update refills them.
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    # /dev, /proc and /sys are provided by the container runtime.
    tar -C "$ROOTFS" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' \
        --exclude='./sys/*' -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$ROOTFS"
    log "cached rootfs: $TARBALL ($(du -h "$TARBALL" | cut -f1))"
else
    log "using cached rootfs $TARBALL"
fi

start=$SECONDS
docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change 'CMD ["/bin/bash"]' \
    --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase with $PACKAGES\"" \
    --message "debootstrap $SUITE minbase + $PACKAGES" \
    "$TARBALL" "$TAG" >/dev/null
log "docker import took $((SECONDS - start))s: $TAG ($(docker image inspect --format '{{.Size}}' "$TAG") bytes)"
