#!/usr/bin/env bash
# Creates or refreshes the project's virtual environment in .venv with every Python package
# the project needs (operator, worker and dev groups). uv and its package cache live outside
# the repository, so a fresh clone on a warm machine gets a full environment in seconds.
# Idempotent: does nothing when .venv already matches pyproject.toml.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LLMFLEET_CACHE:-$HOME/.cache/llmfleet}"
UV_VERSION=0.13.8
PYTHON="${PYTHON:-python3}"
export UV_CACHE_DIR="$CACHE/uv-cache" UV_LINK_MODE=hardlink

stamp_of() { cat "$ROOT/pyproject.toml" "$0" | sha256sum | cut -c1-16; }
want="$(stamp_of)"
if [[ -f "$ROOT/.venv/.llmfleet-stamp" && "$(cat "$ROOT/.venv/.llmfleet-stamp")" == "$want" ]]; then
  exit 0
fi

uv="$CACHE/uv-$UV_VERSION/bin/uv"
if [[ ! -x "$uv" ]]; then
  echo "[python-env] installing uv $UV_VERSION" >&2
  rm -rf "$CACHE/uv-$UV_VERSION"
  "$PYTHON" -m venv "$CACHE/uv-$UV_VERSION"
  "$CACHE/uv-$UV_VERSION/bin/pip" install --quiet "uv==$UV_VERSION"
fi

echo "[python-env] syncing .venv (first time downloads torch: a few minutes)" >&2
[[ -x "$ROOT/.venv/bin/python" ]] || "$uv" venv --quiet --python "$PYTHON" "$ROOT/.venv"
"$uv" pip install --quiet --python "$ROOT/.venv/bin/python" -e "$ROOT[operator,worker,dev]"
echo "$want" > "$ROOT/.venv/.llmfleet-stamp"
