#!/usr/bin/env bash
# Fetches the prometheus-operator CRDs (PrometheusRule, ServiceMonitor, PodMonitor) of the
# pinned PROMETHEUS_OPERATOR_VERSION from the Go module proxy into a cache outside the
# repository, keyed by version, and prints their directory. The tests install them into the
# local cluster so that its API server validates the chart's monitoring objects against the
# real schemas. A warm run only prints the directory.
#
# Usage: hack/prometheus-operator-crds.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

CACHE="${LLMFLEET_CACHE:-$HOME/.cache/llmfleet}"
MODULE="github.com/prometheus-operator/prometheus-operator"
OUT="$CACHE/prometheus-operator-crds-$PROMETHEUS_OPERATOR_VERSION"
CRDS=(monitoring.coreos.com_prometheusrules.yaml monitoring.coreos.com_servicemonitors.yaml
  monitoring.coreos.com_podmonitors.yaml)

if [[ ! -f "$OUT/.complete" ]]; then
  echo "[crds] fetching $MODULE@$PROMETHEUS_OPERATOR_VERSION CRDs (first time only)" >&2
  mkdir -p "$CACHE"
  tmp="$(mktemp -d "$CACHE/.prometheus-operator-crds.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # Outside any module, so that no go.mod around the caller is consulted or changed.
  dir="$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "$MODULE@$PROMETHEUS_OPERATOR_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  mkdir -p "$tmp/out"
  for crd in "${CRDS[@]}"; do
    cp "$dir/example/prometheus-operator-crd/$crd" "$tmp/out/$crd"
  done
  chmod -R u+w "$tmp/out"
  touch "$tmp/out/.complete"
  # Atomic: a concurrent caller that got there first wins, ours is dropped.
  mv -T "$tmp/out" "$OUT" 2>/dev/null || [[ -f "$OUT/.complete" ]]
fi
echo "$OUT"
