#!/usr/bin/env bash
# Installs the Debian packages a part of the project needs, only when missing.
#   hack/apt.sh            the tests': Prometheus and promtool, openssl
#   hack/apt.sh images     + buildah, podman, mmdebstrap, runc (make images)
#   hack/apt.sh node       + runc, the CNI plugins, iproute2, iptables, socat (real kubelet nodes)
set -euo pipefail
missing=()
# need COMMAND_OR_PATH PACKAGE: PACKAGE unless COMMAND is on PATH (or the path exists)
need() { command -v "$1" >/dev/null 2>&1 || [[ -e "$1" ]] || missing+=("$2"); }
# promtool (the rule checks and rule unit tests) comes with the prometheus package too.
need prometheus prometheus
need promtool prometheus
need openssl openssl
for part in "$@"; do
  case "$part" in
    images) need buildah buildah; need podman podman; need mmdebstrap mmdebstrap; need runc runc ;;
    node) need runc runc; need /usr/lib/cni/bridge containernetworking-plugins
          need ip iproute2; need iptables iptables; need nsenter util-linux; need socat socat ;;
    *) echo "[apt] unknown part: $part" >&2; exit 2 ;;
  esac
done
if ((${#missing[@]})); then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  echo "[apt] installing ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  # No service is wanted: the tests start Prometheus (and containerd) themselves.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
