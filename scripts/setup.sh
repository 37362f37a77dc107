#!/usr/bin/env bash
# Create the project's Python environment (.venv) from the pinned requirements.
#
#   bash scripts/setup.sh          # .venv with requirements.txt (what `pulumi up` and the check need)
#   bash scripts/setup.sh --dev    # .venv with requirements-dev.txt (the tests, linters, benchmarks)
#
# Safe to run again: an existing .venv is kept and pip only installs what is
# missing or pinned differently. Needs Python 3.11+ with the venv module (on
# Debian/Ubuntu: `sudo apt-get install python3-venv`). No Pulumi CLI, no Docker.
set -euo pipefail
cd "$(dirname "$0")/.."

requirements=requirements.txt
quiet=0
for arg in "$@"; do
    case "$arg" in
    --dev) requirements=requirements-dev.txt ;;
    --quiet) quiet=1 ;;
    *)
        echo "usage: $0 [--dev] [--quiet]" >&2
        exit 2
        ;;
    esac
done

log() { printf 'setup: %s\n' "$*" >&2; }

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
    log "no $python on PATH; install Python 3.11 or newer (Debian 12: apt-get install python3 python3-venv)"
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    log "$("$python" --version 2>&1) is too old; this project needs Python 3.11 or newer"
    exit 1
fi

if [[ -x .venv/bin/python ]]; then
    ((quiet)) || log "using the existing .venv"
else
    log "creating .venv with $("$python" --version 2>&1)"
    if ! "$python" -m venv .venv; then
        rm -rf .venv
        log "'$python -m venv' failed; on Debian/Ubuntu install it with: sudo apt-get install python3-venv"
        exit 1
    fi
fi
((quiet)) || log "installing $requirements (pinned) into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -r "$requirements"

((quiet)) && exit 0
cat >&2 <<'NEXT'
setup: done. Next:
  .venv/bin/python -m components.cli.check --stack dev    # check Pulumi.dev.yaml, print the plan (no Pulumi CLI)
  bash scripts/deploy.sh dev                          # create the stack, ask for the token, pulumi up
NEXT
