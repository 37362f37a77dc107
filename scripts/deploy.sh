#!/usr/bin/env bash
# Deploy a stack on a fresh machine, with Pulumi's local state backend (no account):
#
#   bash scripts/deploy.sh            # stack "dev" (Pulumi.dev.yaml)
#   bash scripts/deploy.sh cpu        # another stack file, Pulumi.<stack>.yaml
#   bash scripts/deploy.sh dev --yes  # extra arguments go to `pulumi up`
#
# Needs the Pulumi CLI and a Docker engine (plus NVIDIA's container toolkit for
# GPU stacks). Installs the program's Python packages into .venv from
# requirements.txt, logs in to the local backend (state under ~/.pulumi), selects
# or creates the stack, and runs `pulumi up`. The local backend encrypts secrets
# with a passphrase: set PULUMI_CONFIG_PASSPHRASE (or you will be asked).
set -euo pipefail
cd "$(dirname "$0")/.."

stack="${1:-dev}"
shift || true

if ! command -v pulumi >/dev/null 2>&1; then
    echo "deploy: the Pulumi CLI is not installed; see README.md, Prerequisites" >&2
    exit 1
fi
if [[ ! -f "Pulumi.$stack.yaml" ]]; then
    echo "deploy: no Pulumi.$stack.yaml in $(pwd)" >&2
    exit 1
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt

# Review before anything is created: the program validates the stack file the same way.
.venv/bin/python -m components.render_config --stack "$stack" >/dev/null

if [[ -z "${PULUMI_BACKEND_URL:-}" ]]; then
    pulumi login --local
fi
pulumi stack select "$stack" --create
pulumi up "$@"
