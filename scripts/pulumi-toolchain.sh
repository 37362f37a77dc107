#!/usr/bin/env bash
# Build the real Pulumi CLI from Go modules (through the Go module proxy only) into
# a cache keyed by its version, so tests can run the real engine offline.
#
#   bash scripts/pulumi-toolchain.sh              # build or reuse; last stdout line: the bin dir
#   bash scripts/pulumi-toolchain.sh --print-env  # same, but print `export PATH=<bin>:$PATH`
#   bash scripts/pulumi-toolchain.sh --check      # print the bin dir if built, else exit 1
#
# The bin dir holds `pulumi` and `pulumi-resource-pulumi-python` (the Python
# dynamic-provider plugin, a script from the sdk/v3 module), laid out as
# `<cache>/bin` so the Automation API's PulumiCommand(root=<cache>) finds it.
#
# Not built, because the Go module proxy serves no version of them (checked
# 2026-12-01): the Python language host
# (github.com/pulumi/pulumi/sdk/python/cmd/pulumi-language-python/v3: no tags, no
# version list, every pseudo-version tried refused), so only Automation API inline
# programs run, not `pulumi up` on a `runtime: python` project; and the command
# provider (github.com/pulumi/pulumi-command/provider@v0.0.0-20260303235922-7f3eb6f3b77c,
# the commit of tag v1.2.1, refused).
#
# Cache root: $PULUMI_TOOLCHAIN_CACHE (default /var/cache/vllm-nginx/pulumi-toolchain).
# GOMODCACHE and GOPATH stay under it (module downloads, for a rebuild); GOCACHE
# too, removed after a build. `rm -rf` of the root undoes everything.
# Measured on 2 shared cores: 10 to 14 min the first time (downloads ~1 min, the
# rest `go build -p 1`), 1.6 GB (1.5 GB of it module downloads); 0.02 s after.
set -euo pipefail

cli_version=v3.274.1 # the nearest to the Python SDK's 3.272.0 that the proxy serves for pkg/v3
root="${PULUMI_TOOLCHAIN_CACHE:-/var/cache/vllm-nginx/pulumi-toolchain}"
dir="$root/pulumi-$cli_version"
bin="$dir/bin"
marker="$dir/complete"

mode=build
case "${1:-}" in
--print-env) mode=env ;;
--check) mode=check ;;
"") ;;
*)
    echo "usage: $0 [--print-env | --check]" >&2
    exit 2
    ;;
esac

log() { printf 'pulumi-toolchain: %s\n' "$*" >&2; }
finish() {
    if [[ $mode == env ]]; then echo "export PATH=\"$bin:\$PATH\""; else echo "$bin"; fi
    exit 0
}
[[ -f "$marker" && -x "$bin/pulumi" ]] && { [[ $mode == check ]] || log "reusing: $(cat "$marker")"; finish; }
[[ $mode == check ]] && { log "not built: run bash $0"; exit 1; }

mkdir -p "$root"
exec 9>"$root/.lock" # one build at a time; a second caller waits, then reuses it
flock 9
[[ -f "$marker" && -x "$bin/pulumi" ]] && { log "reusing: $(cat "$marker")"; finish; }

go=$(command -v go || echo /usr/local/go/bin/go)
[[ -x "$go" ]] || { log "no Go toolchain (looked on PATH and at /usr/local/go/bin/go)"; exit 1; }
export GOMODCACHE="$root/go/mod" GOCACHE="$root/go/cache" GOPATH="$root/go/path"
export GOFLAGS=-modcacherw CGO_ENABLED=0 GOTOOLCHAIN=local GOMAXPROCS="${GOMAXPROCS:-2}"
rm -rf "$dir"
mkdir -p "$bin" "$dir/src"
started=$SECONDS

# pkg/v3's go.mod replaces sdk/v3 with ../sdk, so `go install .../cmd/pulumi@v`
# refuses. A wrapper module requiring pkg/v3 and sdk/v3 at one version builds it
# (a dependency's replace lines are ignored, so its non-local ones are copied in).
log "downloading github.com/pulumi/pulumi/pkg/v3/cmd/pulumi@$cli_version and its modules"
cd "$dir/src"
printf 'module vllm-nginx/pulumi-toolchain\n\ngo 1.26\n' >go.mod
"$go" mod download "github.com/pulumi/pulumi/pkg/v3@$cli_version"
grep -E '^replace .* => [^.]' "$GOMODCACHE/cache/download/github.com/pulumi/pulumi/pkg/v3/@v/$cli_version.mod" >>go.mod || true
"$go" get "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi@$cli_version" "github.com/pulumi/pulumi/sdk/v3@$cli_version" 2>get.log ||
    { tail -n 20 get.log >&2; exit 1; }
log "downloaded in $((SECONDS - started)) s"

step=$SECONDS
log "building pulumi $cli_version (go build -p ${PULUMI_TOOLCHAIN_JOBS:-1})"
"$go" build -p "${PULUMI_TOOLCHAIN_JOBS:-1}" -trimpath -o "$bin/pulumi" \
    -ldflags "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$cli_version" \
    github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
log "built in $((SECONDS - step)) s"
install -m 0755 "$GOMODCACHE/github.com/pulumi/pulumi/sdk/v3@$cli_version/python/dist/pulumi-resource-pulumi-python" "$bin/"

# The CLI writes a log per command under $PULUMI_HOME: keep it in the cache.
version=$(PULUMI_HOME="$dir/pulumi-home" PULUMI_SKIP_UPDATE_CHECK=true "$bin/pulumi" version)
[[ $version == "$cli_version" ]] || { log "built pulumi says $version, expected $cli_version"; exit 1; }
rm -rf "$GOCACHE" "$dir/pulumi-home"
echo "pulumi $cli_version, built $(date -u +%FT%TZ) in $((SECONDS - started)) s" >"$marker"
log "done in $((SECONDS - started)) s; cache $(du -sh "$root" | cut -f1) in $root"
finish
