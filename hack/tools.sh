#!/usr/bin/env bash
# Builds the cluster tools (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok, helm; kubelet and containerd for real nodes; actionlint; and the tests'
# kstatus-check) from the Go module proxy into a cache
# outside the repository, keyed by version, and links them into $LLMFLEET_CACHE/bin. A tool
# whose pinned version is already built is reused, so a warm run takes well under a second.
#
# Usage: hack/tools.sh            build what is missing, print the bin directory
#        hack/tools.sh TOOL...    only these (and print the bin directory), e.g.
#                                 `hack/tools.sh actionlint` for make lint; TOOL is one of
#                                 kubernetes (kube-* and kubectl), kubelet, containerd, etcd,
#                                 kwok, helm, kstatus-check, actionlint, prometheus,
#                                 prometheus-operator-crds
set -euo pipefail

TOOLS=(kubernetes kubelet containerd etcd kwok helm kstatus-check actionlint prometheus prometheus-operator-crds)
WANT=("$@")
for t in "${WANT[@]}"; do
  [[ " ${TOOLS[*]} " == *" $t "* ]] || { echo "[tools] unknown tool: $t (one of: ${TOOLS[*]})" >&2; exit 2; }
done
# want TOOL: was TOOL asked for (no arguments: every tool)?
want() { ((${#WANT[@]} == 0)) || [[ " ${WANT[*]} " == *" $1 "* ]]; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

CACHE="${LLMFLEET_CACHE:-$HOME/.cache/llmfleet}"
BIN="$CACHE/bin"
mkdir -p "$BIN" "$CACHE/build"
export GOFLAGS="-mod=mod" GOTOOLCHAIN="${GOTOOLCHAIN:-local}" CGO_ENABLED=0

log() { echo "[tools] $*" >&2; }

# One build at a time: concurrent callers (make, pytest, a second shell) wait here.
exec 9>"$CACHE/.tools.lock"
flock 9

# link NAME DIR: point $BIN/NAME at DIR/NAME (atomic replace)
link() { ln -sfn "$2/$1" "$BIN/$1.tmp" && mv -Tf "$BIN/$1.tmp" "$BIN/$1"; }

# build_in_module KEY VERSION_DIR MODULE@VERSION "EXTRA go.mod LINES" PKG...
# Builds main packages PKG... of a dependency inside a throwaway wrapper module, so that the
# dependency's own replace directives (which Go ignores for dependencies) can be restated.
build_in_module() {
  local key="$1" out="$2" req="$3" extra="$4"; shift 4
  if [[ -f "$out/.complete" ]]; then return 0; fi
  local mod="$CACHE/build/$key"
  rm -rf "$mod" && mkdir -p "$mod" "$out"
  log "building $key ($req): $* (first time only; several minutes)"
  local start=$SECONDS
  (
    cd "$mod"
    # SRC=DIR: a main package of this repository, copied in as package $key/$(basename DIR).
    if [[ -n "${SRC:-}" ]]; then cp -r "$SRC" "$mod/"; fi
    printf 'module llmfleet.local/tools/%s\n\ngo 1.26\n\nrequire %s\n%s\n' \
      "$key" "${req/@/ }" "$extra" > go.mod
    # The tools.go pattern: a file excluded from every build that imports the main packages,
    # so `go mod tidy` resolves their whole dependency graph.
    { printf '//go:build tools\n\npackage tools\n\nimport (\n'
      for p in "$@"; do printf '\t_ "%s"\n' "$p"; done
      printf ')\n'; } > tools.go
    go mod tidy
    go build -trimpath -ldflags "-s -w ${LDFLAGS:-}" -o "$out/" "$@"
  )
  touch "$out/.complete"
  log "built $key in $((SECONDS - start))s"
}

# --- Kubernetes: the staging modules k8s.io/* are replaced by their published v0.X.Y ---
# (k8s.io/kubernetes points them at ./staging, which only exists inside its own tree)
k8s_staging_replaces() {
  local modfile staging_ver="v0.${KUBERNETES_VERSION#v1.}"
  modfile="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging_ver"'#p' "$modfile"
}
k8s_version_ldflags="-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${KUBERNETES_VERSION#v1.}"
if want kubernetes; then
  k8s_out="$CACHE/kubernetes-$KUBERNETES_VERSION"
  if [[ ! -f "$k8s_out/.complete" ]]; then
    replaces="$(k8s_staging_replaces)"
    LDFLAGS="$k8s_version_ldflags -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION" \
      build_in_module "kubernetes-$KUBERNETES_VERSION" "$k8s_out" "k8s.io/kubernetes@$KUBERNETES_VERSION" "$replaces" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
  fi
  for t in kube-apiserver kube-controller-manager kube-scheduler kubectl; do link "$t" "$k8s_out"; done
fi

# --- kubelet (real nodes beside the kwok ones): its own key, so the binaries above stay cached ---
if want kubelet; then
  kubelet_out="$CACHE/kubelet-$KUBERNETES_VERSION"
  if [[ ! -f "$kubelet_out/.complete" ]]; then
    replaces="$(k8s_staging_replaces)"
    LDFLAGS="$k8s_version_ldflags" \
      build_in_module "kubelet-$KUBERNETES_VERSION" "$kubelet_out" "k8s.io/kubernetes@$KUBERNETES_VERSION" "$replaces" \
      k8s.io/kubernetes/cmd/kubelet
  fi
  link kubelet "$kubelet_out"
fi

# --- containerd v2 (the real node's CRI runtime; Debian's runc runs the containers) ---
if want containerd; then
  containerd_out="$CACHE/containerd-$CONTAINERD_VERSION"
  LDFLAGS="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" GOFLAGS="$GOFLAGS -tags=no_btrfs,no_devmapper,no_zfs" \
    build_in_module "containerd-$CONTAINERD_VERSION" "$containerd_out" "github.com/containerd/containerd/v2@$CONTAINERD_VERSION" "" \
    github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr
  for t in containerd containerd-shim-runc-v2 ctr; do link "$t" "$containerd_out"; done
fi

# --- etcd ---
if want etcd; then
  etcd_out="$CACHE/etcd-$ETCD_VERSION"
  build_in_module "etcd-$ETCD_VERSION" "$etcd_out" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "" go.etcd.io/etcd/server/v3
  [[ -e "$etcd_out/etcd" ]] || mv "$etcd_out/v3" "$etcd_out/etcd" 2>/dev/null || mv "$etcd_out/server" "$etcd_out/etcd"
  link etcd "$etcd_out"
fi

# --- kwok ---
if want kwok; then
  kwok_out="$CACHE/kwok-$KWOK_VERSION"
  LDFLAGS="-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
    build_in_module "kwok-$KWOK_VERSION" "$kwok_out" "sigs.k8s.io/kwok@$KWOK_VERSION" "" sigs.k8s.io/kwok/cmd/kwok
  link kwok "$kwok_out"
fi

# --- helm ---
if want helm; then
  helm_out="$CACHE/helm-$HELM_VERSION"
  LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    build_in_module "helm-$HELM_VERSION" "$helm_out" "helm.sh/helm/v3@$HELM_VERSION" "" helm.sh/helm/v3/cmd/helm
  link helm "$helm_out"
fi

# --- kstatus-check: what kstatus (Flux's wait/healthChecks) makes of an object ---
# Our hack/kstatus-check/main.go on sigs.k8s.io/cli-utils; keyed by its source too.
if want kstatus-check; then
  ks_key="kstatus-check-$CLI_UTILS_VERSION-$(sha256sum "$HERE/kstatus-check/main.go" | cut -c1-12)"
  SRC="$HERE/kstatus-check" build_in_module "$ks_key" "$CACHE/$ks_key" \
    "sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION" "" "llmfleet.local/tools/$ks_key/kstatus-check"
  link kstatus-check "$CACHE/$ks_key"
fi

# --- actionlint: make lint checks the release workflows with it ---
if want actionlint; then
  actionlint_out="$CACHE/actionlint-$ACTIONLINT_VERSION"
  LDFLAGS="-X github.com/rhysd/actionlint.version=$ACTIONLINT_VERSION" \
    build_in_module "actionlint-$ACTIONLINT_VERSION" "$actionlint_out" "github.com/rhysd/actionlint@$ACTIONLINT_VERSION" "" \
    github.com/rhysd/actionlint/cmd/actionlint
  link actionlint "$actionlint_out"
fi

# --- Prometheus with Kubernetes service discovery (Debian's build leaves it out): the real-node
# tier finds worker pods with kubernetes_sd_configs, as prometheus-operator configures it ---
if want prometheus; then
  prom_out="$CACHE/prometheus-$PROMETHEUS_VERSION"
  v="${PROMETHEUS_VERSION#v0.}"; prom_release="${v:0:1}.$((10#${v:1:2})).${v##*.}"  # v0.316.0 -> 3.16.0
  LDFLAGS="-X github.com/prometheus/common/version.Version=$prom_release" GOFLAGS="$GOFLAGS -tags=netgo" \
    build_in_module "prometheus-$PROMETHEUS_VERSION" "$prom_out" "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" "" \
    github.com/prometheus/prometheus/cmd/prometheus
  link prometheus "$prom_out"
fi

# --- prometheus-operator CRDs (files, not binaries): the schemas the chart's monitors meet ---
if want prometheus-operator-crds; then
  bash "$HERE/prometheus-operator-crds.sh" >/dev/null
fi

echo "$BIN"
