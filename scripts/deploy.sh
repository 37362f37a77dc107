#!/usr/bin/env bash
# Deploy a stack: check it, pick a Pulumi backend, create the stack, get the token, `pulumi up`.
#
#   bash scripts/deploy.sh                 # stack "dev" (Pulumi.dev.yaml)
#   bash scripts/deploy.sh cpu             # another stack file, Pulumi.<stack>.yaml
#   bash scripts/deploy.sh dev --no-token  # a public model: do not ask for a Hugging Face token
#   bash scripts/deploy.sh dev --yes       # other arguments go to `pulumi up`
#
# Steps, each of which stops the script when it fails:
# 1. the Pulumi CLI must be installed (otherwise: how to install it);
# 2. .venv is made or updated from requirements.txt (scripts/setup.sh);
# 3. the stack file is checked with the rules `pulumi up` applies
#    (python -m components.cli.check): a bad file stops here, before Pulumi runs;
# 4. the Pulumi backend you are logged in to is kept (`pulumi whoami`); only when
#    there is none does it log in to the local backend (state under ~/.pulumi);
# 5. the stack is selected, or created;
# 6. if the stack sets no hfToken and its model is not a local path, it runs
#    `pulumi config set --secret hfToken` (you paste the token; input is hidden)
#    when stdin is a terminal, and otherwise stops with the command to run;
# 7. `pulumi up`.
# The local backend encrypts secrets with a passphrase: set PULUMI_CONFIG_PASSPHRASE
# (or Pulumi asks for it).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'deploy: %s\n' "$*" >&2; }

stack=dev
if [[ $# -gt 0 && "$1" != -* ]]; then
    stack="$1"
    shift
fi
ask_token=1
up_args=()
for arg in "$@"; do
    if [[ "$arg" == --no-token ]]; then ask_token=0; else up_args+=("$arg"); fi
done

if ! command -v pulumi >/dev/null 2>&1; then
    cat >&2 <<'INSTALL'
deploy: the Pulumi CLI is not installed (or not on PATH). Install it with Pulumi's official installer:
  curl -fsSL https://get.pulumi.com | sh
then open a new shell (it adds ~/.pulumi/bin to PATH) and run this again.
Other ways (Homebrew, Windows, a fixed version): https://www.pulumi.com/docs/install/
You can check the stack file without the CLI: .venv/bin/python -m components.cli.check --stack STACK
INSTALL
    exit 1
fi
if [[ ! -f "Pulumi.$stack.yaml" ]]; then
    log "no Pulumi.$stack.yaml in $(pwd); stack files here:"
    ls Pulumi.*.yaml 2>/dev/null | grep -v '^Pulumi.yaml$' | sed 's/^/  /' >&2 || true
    exit 1
fi

bash scripts/setup.sh --quiet

log "checking Pulumi.$stack.yaml"
.venv/bin/python -m components.cli.check --stack "$stack"

if pulumi whoami >/dev/null 2>&1; then
    log "using your current Pulumi backend: $(pulumi whoami --verbose 2>/dev/null | sed -n 's/^ *Backend URL: *//p' | head -n1)"
elif [[ -n "${PULUMI_BACKEND_URL:-}" ]]; then
    log "PULUMI_BACKEND_URL is $PULUMI_BACKEND_URL but \`pulumi whoami\` fails there; log in to it first:"
    log "  pulumi login $PULUMI_BACKEND_URL"
    exit 1
else
    log "no Pulumi backend is configured: logging in to the local backend (state in ~/.pulumi, no account)."
    log "To keep state elsewhere instead, run \`pulumi login <url>\` (Pulumi Cloud, s3://..., file://...)"
    log "or set PULUMI_BACKEND_URL, before this script."
    pulumi login --local
fi

pulumi stack select "$stack" --create

if ((ask_token)); then
    status="$(.venv/bin/python -m components.cli.check --stack "$stack" --hf-token-status)"
    if [[ "$status" == missing ]]; then
        if [[ -t 0 ]]; then
            log "stack $stack sets no hfToken and its model comes from Hugging Face; gated models"
            log "need a token with access. Paste it now (stored encrypted; --no-token skips this):"
            pulumi config set --secret hfToken --stack "$stack"
        else
            log "stack $stack sets no hfToken and its model comes from Hugging Face (gated models"
            log "need a token). Set it once, then run this again:"
            log "  pulumi config set --secret hfToken --stack $stack     # asks for the value"
            log "  printf %s \"\$HF_TOKEN\" | pulumi config set --secret hfToken --stack $stack   # from a variable"
            log "or, for a public model: bash scripts/deploy.sh $stack --no-token"
            exit 1
        fi
    fi
fi

pulumi up --stack "$stack" ${up_args[@]+"${up_args[@]}"}
