#!/usr/bin/env bash
# Installs the Debian packages the tests need (Prometheus and promtool, openssl), only when
# missing.
set -euo pipefail
missing=()
# promtool (the rule checks and rule unit tests) comes with the prometheus package too.
{ command -v prometheus && command -v promtool; } >/dev/null || missing+=(prometheus)
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]})); then
  echo "[apt] installing ${missing[*]}" >&2
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  # The package's service is not wanted: the tests start Prometheus themselves on loopback.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
