#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a used one:
#
#   bash scripts/test.sh            # everything: lint, types, unit, real nginx, real Docker
#   bash scripts/test.sh -k nginx   # extra arguments go to pytest
#
# Needs: Debian 12 (bookworm) with a working apt mirror (the Debian packages below,
# and debootstrap of the offline base image from that same mirror); Go 1.26 and the
# Go module proxy (the Pulumi CLI is built from Go modules: about 11 minutes and
# 1.6 GB the first time, cached in /var/cache/vllm-nginx/pulumi-toolchain; Kubernetes
# and the pulumi-kubernetes provider too, for the test cluster: about 16 minutes on 2
# idle cores and 2.4 GB, cached in /var/cache/vllm-nginx/k8s-toolchain); Python 3.11+
# with venv; root, or a user with sudo (the root-only steps, apt-get, dockerd and
# debootstrap, go through sudo; that user also needs access to the Docker socket,
# i.e. membership of the `docker` group). No container registry is used.
# First run, measured on a 2-core Debian 12 machine: about 3 minutes of set-up
# (apt: ~65 MB download; .venv with requirements-dev.txt ~40 s; debootstrap of the
# base image ~50 s, docker import a few seconds) before the tests themselves, and
# about 1.5 GB of disk (~260 MB of packages, ~450 MB .venv, ~180 MB rootfs cache in
# /var/cache/vllm-nginx, ~400 MB of images under /var/lib/docker). Later runs reuse
# all of it.
#
# Installs what the tests need from this repository's own files (Debian's nginx, its
# njs module libnginx-mod-http-js, debootstrap and docker.io; the Python packages
# pinned in requirements-dev.txt), starts a Docker engine when none answers (and stops it again at the end), makes
# the offline base image once, then runs ruff, mypy and pytest. With CI=true a
# missing tool fails the tests instead of skipping them.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*" >&2; }

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v debootstrap >/dev/null 2>&1 || [[ -x /usr/sbin/debootstrap ]] || missing+=(debootstrap)
# njs (nginx's JavaScript module, 0.7.9 in Debian 12) for the prefix_affinity policy.
[[ -e /usr/lib/nginx/modules/ngx_http_js_module.so ]] || missing+=(libnginx-mod-http-js)
# The test cluster's pod network (bridge, host-local, loopback, portmap).
[[ -e /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
log "Python environment (.venv, requirements-dev.txt)"
bash scripts/setup.sh --dev --quiet

log "Docker engine and the offline base image"
if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    log "a Docker engine already answers; using it and leaving it running"
else
    bash scripts/docker-engine.sh start
    trap 'bash scripts/docker-engine.sh stop' EXIT
fi
if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    # The engine runs (docker-engine.sh checked as root) but this user cannot reach it.
    log "the Docker engine runs, but $(id -un) cannot use its socket; add yourself to the"
    log "docker group, then log in again (or run \`newgrp docker\`):"
    log "  sudo usermod -aG docker $(id -un)"
    exit 1
fi
bash scripts/base-image.sh

log "the Pulumi CLI (built from Go modules once, then cached)"
PULUMI_TOOLCHAIN_JOBS="${PULUMI_TOOLCHAIN_JOBS:-2}" bash scripts/pulumi-toolchain.sh >/dev/null

log "Kubernetes and the pulumi-kubernetes provider (built from Go modules once, then cached)"
K8S_TOOLCHAIN_JOBS="${K8S_TOOLCHAIN_JOBS:-2}" bash scripts/k8s-toolchain.sh >/dev/null

log "ruff and mypy"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy .

log "pytest"
# Two workers: the Docker engine's tests in file order on one (they share names
# and ports), the rest on the other (tests/conftest.py); PYTEST_WORKERS=0 runs
# everything in this process, one test at a time.
.venv/bin/python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadgroup --durations=15 "$@"
