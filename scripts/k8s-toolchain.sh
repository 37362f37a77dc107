#!/usr/bin/env bash
# Build a single-node Kubernetes and the real pulumi-kubernetes provider from Go
# modules (through the Go module proxy only) into a cache keyed by their versions,
# so the cluster tests run the real control plane, kubelet and provider offline.
#
#   bash scripts/k8s-toolchain.sh           # build or reuse; prints name=path lines
#   bash scripts/k8s-toolchain.sh --check   # print them if built, else exit 1
#
# Output (stdout, one per line):
#   kubernetes=<dir>  kube-apiserver, kube-controller-manager, kube-scheduler,
#                     kubelet, kube-proxy, kubectl (k8s.io/kubernetes) and etcd
#                     (go.etcd.io/etcd/server/v3), from ONE `go build`
#   plugins=<dir>     resource-kubernetes-v<version>/pulumi-resource-kubernetes, laid
#                     out as under $PULUMI_HOME/plugins
#   helpers=<dir>     pause (the sandbox image's program) and fake-gpu-plugin (a
#                     device plugin advertising fake nvidia.com/gpu), ours, from
#                     tests/support/k8s; rebuilt when their source changes
#
# Not built: containerd. Debian 12's containerd 1.6.20 (installed with docker.io)
# lacks the CRI RuntimeConfig call, and kubelet 1.37 still falls back to its own
# cgroupDriver setting then (cmd/kubelet/app/server.go:1466-1480 at v1.37.2, with
# the metric announcing the loss of support in 1.38). No cluster DNS either
# (CoreDNS is not part of these modules): see docs/testing.md.
#
# Versions and skew: k8s.io/kubernetes v1.37.2 with every staging module at v0.37.2
# (a wrapper module pins them: kubernetes' own go.mod replaces them with local
# folders); etcd v3.7.3 (Debian's 3.4 is too old for 1.37). The proxy serves the
# pulumi-kubernetes provider only as one pseudo-version, the commit of tag v4.25.0,
# so the Python SDK is pinned at 4.25.0 too (requirements-dev.txt): no skew.
#
# Cache root: $K8S_TOOLCHAIN_CACHE (default /var/cache/vllm-nginx/k8s-toolchain).
# GOMODCACHE and GOPATH stay under it; GOCACHE too, removed after a build.
# `rm -rf` of the root undoes everything. K8S_TOOLCHAIN_JOBS sets `go build -p`.
# Measured on 2 cores shared with other builds (load 7 to 12), 2026-12-07: Kubernetes
# and etcd 1244 s, the provider 1031 s (19 CPU-minutes) plus ~80 s of downloads and
# schema generation, the helpers seconds; 2.4 GB (1.7 GB of it module downloads,
# 540 MB Kubernetes, 170 MB the provider). A cached run or --check: 0.02 s.
set -euo pipefail

kube_version=v1.37.2
staging_version=v0.37.2
etcd_version=v3.7.3
provider_pseudo=v4.0.0-20260115033456-f47bc2d6f199 # the commit of pulumi-kubernetes tag v4.25.0
provider_sdk=v4.25.0                               # github.com/pulumi/pulumi-kubernetes/sdk/v4
plugin_version=4.25.0                              # what pulumi-kubernetes==4.25.0 asks for
staging=(api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
    cri-client cri-streaming csi-translation-lib dynamic-resource-allocation endpointslice
    externaljwt kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl
    kubelet metrics mount-utils pod-security-admission sample-apiserver sample-cli-plugin
    sample-controller streaming)
commands=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)

repo=$(cd "$(dirname "$0")/.." && pwd)
helpers_src="$repo/tests/support/k8s"
root="${K8S_TOOLCHAIN_CACHE:-/var/cache/vllm-nginx/k8s-toolchain}"
kube_dir="$root/kubernetes-$kube_version-etcd-$etcd_version"
plugin_dir="$root/pulumi-kubernetes-$plugin_version"
helpers_key=$(cd "$helpers_src" && find . -name '*.go' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12)
helpers_dir="$root/helpers-$helpers_key"

mode=build
case "${1:-}" in
--check) mode=check ;;
"") ;;
*)
    echo "usage: $0 [--check]" >&2
    exit 2
    ;;
esac

log() { printf 'k8s-toolchain: %s\n' "$*" >&2; }
built() { [[ -f "$kube_dir/complete" && -f "$plugin_dir/complete" && -f "$helpers_dir/complete" ]]; }
finish() {
    printf 'kubernetes=%s\nplugins=%s\nhelpers=%s\n' "$kube_dir/bin" "$plugin_dir/plugins" "$helpers_dir/bin"
    exit 0
}
if built; then
    [[ $mode == check ]] || log "reusing: $(cat "$kube_dir/complete" "$plugin_dir/complete" "$helpers_dir/complete" | paste -sd ';')"
    finish
fi
if [[ $mode == check ]]; then
    for part in "$kube_dir" "$plugin_dir" "$helpers_dir"; do [[ -f "$part/complete" ]] || log "not built: $part"; done
    log "run: bash $0"
    exit 1
fi

mkdir -p "$root"
exec 9>"$root/.lock" # one build at a time; a second caller waits, then reuses it
flock 9
built && { log "reusing: built by another run"; finish; }

go=$(command -v go || echo /usr/local/go/bin/go)
[[ -x "$go" ]] || { log "no Go toolchain (looked on PATH and at /usr/local/go/bin/go)"; exit 1; }
export GOMODCACHE="$root/go/mod" GOCACHE="$root/go/cache" GOPATH="$root/go/path"
export GOFLAGS=-modcacherw CGO_ENABLED=0 GOTOOLCHAIN=local GOMAXPROCS="${GOMAXPROCS:-2}"
jobs="${K8S_TOOLCHAIN_JOBS:-2}"
started=$SECONDS

# The wrapper module for Kubernetes, etcd and our helpers: kubernetes' go.mod
# requires the staging modules at v0.0.0 and replaces them with ./staging folders,
# which a dependency's replace cannot do, so ours replaces each with v0.37.2.
kube_module() {
    local src=$1
    mkdir -p "$src"
    cd "$src"
    if [[ ! -f go.sum ]]; then
        printf 'module vllm-nginx/k8s-toolchain\n\ngo 1.26\n\n' >go.mod
        for module in "${staging[@]}"; do
            echo "replace k8s.io/$module => k8s.io/$module $staging_version"
        done >>go.mod
        local step=$SECONDS
        log "downloading k8s.io/kubernetes@$kube_version, its staging modules at $staging_version, etcd $etcd_version"
        "$go" get "${commands[@]/#/k8s.io/kubernetes/cmd/}" "k8s.io/kubernetes@$kube_version" \
            "go.etcd.io/etcd/server/v3@$etcd_version" >get.log 2>&1 || { tail -n 20 get.log >&2; exit 1; }
        log "downloaded in $((SECONDS - step)) s"
    fi
}

if [[ ! -f "$kube_dir/complete" ]]; then
    rm -rf "$kube_dir/bin"
    mkdir -p "$kube_dir/bin"
    kube_module "$kube_dir/src"
    step=$SECONDS
    v=k8s.io/component-base/version
    log "building ${commands[*]} and etcd (one go build -p $jobs; about 21 min on 2 busy cores)"
    "$go" build -p "$jobs" -trimpath -o "$kube_dir/bin/" \
        -ldflags "-s -w -X $v.gitVersion=$kube_version -X $v.gitMajor=1 -X $v.gitMinor=37 -X $v.gitTreeState=clean" \
        "${commands[@]/#/k8s.io/kubernetes/cmd/}" go.etcd.io/etcd/server/v3
    mv "$kube_dir/bin/server" "$kube_dir/bin/etcd" # the package's last element before /v3
    "$kube_dir/bin/kubelet" --version | grep -qx "Kubernetes $kube_version" ||
        { log "built kubelet says $("$kube_dir/bin/kubelet" --version)"; exit 1; }
    echo "kubernetes $kube_version + etcd $etcd_version, built $(date -u +%FT%TZ) in $((SECONDS - step)) s" >"$kube_dir/complete"
    log "$(cat "$kube_dir/complete")"
fi

if [[ ! -f "$helpers_dir/complete" ]]; then
    rm -rf "$root"/helpers-* # older sources' builds
    mkdir -p "$helpers_dir/bin"
    kube_module "$kube_dir/src"
    step=$SECONDS
    rm -rf "$kube_dir/src/cmd"
    mkdir -p "$kube_dir/src/cmd"
    cp -r "$helpers_src/pause" "$helpers_src/fake-gpu-plugin" "$kube_dir/src/cmd/"
    log "building our pause and fake-gpu-plugin (tests/support/k8s)"
    (cd "$kube_dir/src" && "$go" build -p "$jobs" -trimpath -ldflags "-s -w" -o "$helpers_dir/bin/" ./cmd/pause ./cmd/fake-gpu-plugin)
    echo "helpers $helpers_key, built $(date -u +%FT%TZ) in $((SECONDS - step)) s" >"$helpers_dir/complete"
    log "$(cat "$helpers_dir/complete")"
fi

if [[ ! -f "$plugin_dir/complete" ]]; then
    rm -rf "$plugin_dir"
    src="$plugin_dir/src"
    main="$src/cmd/pulumi-resource-kubernetes"
    mkdir -p "$main" "$plugin_dir/plugins/resource-kubernetes-v$plugin_version"
    cd "$src"
    step=$SECONDS
    log "downloading github.com/pulumi/pulumi-kubernetes/provider/v4@$provider_pseudo (tag v$plugin_version)"
    # provider/v4's go.mod replaces sdk/v4 with ../sdk: require it at its own tag instead.
    printf 'module vllm-nginx/pulumi-kubernetes-plugin\n\ngo 1.26\n' >go.mod
    "$go" get "github.com/pulumi/pulumi-kubernetes/provider/v4@$provider_pseudo" \
        "github.com/pulumi/pulumi-kubernetes/sdk/v4@$provider_sdk" >get.log 2>&1 || { tail -n 20 get.log >&2; exit 1; }
    # Its main package embeds schema-embed.json and terraform-mapping-embed.json, which
    # the module's own generate.go writes from the schema.json it ships (with VERSION).
    module_dir=$("$go" list -m -f '{{.Dir}}' "github.com/pulumi/pulumi-kubernetes/provider/v4")
    cp "$module_dir"/cmd/pulumi-resource-kubernetes/{main.go,generate.go,schema.json,terraform-mapping.json} "$main/"
    chmod u+w "$main"/*
    "$go" mod tidy >>get.log 2>&1 || { tail -n 20 get.log >&2; exit 1; }
    log "downloaded in $((SECONDS - step)) s"
    (cd "$main" && VERSION="$plugin_version" "$go" run generate.go)
    step=$SECONDS
    log "building pulumi-resource-kubernetes $plugin_version (go build -p $jobs)"
    "$go" build -p "$jobs" -trimpath \
        -ldflags "-s -w -X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version=$plugin_version" \
        -o "$plugin_dir/plugins/resource-kubernetes-v$plugin_version/pulumi-resource-kubernetes" ./cmd/pulumi-resource-kubernetes
    echo "pulumi-resource-kubernetes $plugin_version, built $(date -u +%FT%TZ) in $((SECONDS - step)) s" >"$plugin_dir/complete"
    log "$(cat "$plugin_dir/complete")"
fi

rm -rf "$GOCACHE"
log "done in $((SECONDS - started)) s; cache $(du -sh "$root" | cut -f1) in $root"
finish
