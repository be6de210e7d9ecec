#!/usr/bin/env bash
# The two settings this kind of sandbox needs before podman/buildah can run a container, as a
# drop-in that leaves the machine's own containers.conf alone: runc (crun refuses hybrid cgroup
# v1/v2), and explicit ulimits (the sandbox cannot raise process limits to the defaults).
set -euo pipefail
conf=/etc/containers/containers.conf.d/50-llmfleet.conf
want='[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"'
if [[ ! -f "$conf" || "$(cat "$conf")" != "$want" ]]; then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO mkdir -p "$(dirname "$conf")"
  printf '%s\n' "$want" | $SUDO tee "$conf" >/dev/null
fi
