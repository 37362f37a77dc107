#!/usr/bin/env bash
# The whole test suite, on a fresh machine or a used one:
#
#   bash scripts/test.sh            # everything: lint, types, unit, real nginx, real Docker
#   bash scripts/test.sh -k nginx   # extra arguments go to pytest
#
# Installs what the tests need from this repository's own files (Debian's nginx,
# debootstrap and docker.io; the Python packages pinned in requirements-dev.txt),
# starts a Docker engine when none answers (and stops it again at the end), makes
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
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
log "Python environment (.venv, requirements-dev.txt)"
[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt

log "Docker engine and the offline base image"
if docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    log "a Docker engine already answers; using it and leaving it running"
else
    bash scripts/docker-engine.sh start
    trap 'bash scripts/docker-engine.sh stop' EXIT
fi
bash scripts/base-image.sh

log "ruff and mypy"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy .

log "pytest"
.venv/bin/python -m pytest "$@"
