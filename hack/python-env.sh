#!/usr/bin/env bash
# Creates or refreshes the project's virtual environment in .venv with every Python package
# the project needs (operator, worker and dev extras) at the versions uv.lock pins. uv and its
# package cache live outside the repository, so a fresh clone on a warm machine gets a full
# environment in seconds.
# Idempotent: does nothing when .venv already matches pyproject.toml and uv.lock.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LLMFLEET_CACHE:-$HOME/.cache/llmfleet}"
# shellcheck source=versions.env
source "$ROOT/hack/versions.env"
PYTHON="${PYTHON:-python3}"
export UV_CACHE_DIR="$CACHE/uv-cache" UV_LINK_MODE=hardlink

stamp_of() { cat "$ROOT/pyproject.toml" "$ROOT/uv.lock" "$0" | sha256sum | cut -c1-16; }
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
# Exactly what uv.lock pins (--locked: a pyproject.toml changed without `uv lock` is an error,
# not a silent re-resolve), the project itself editable.
(cd "$ROOT" && "$uv" sync --quiet --locked --all-extras --python "$PYTHON")
# Bytecode for every installed package, once: where PYTHONDONTWRITEBYTECODE is set (or
# site-packages is read-only) Python never caches it, and each process that imports torch and
# transformers compiles ~1400 modules from source again (about half of a worker's start-up
# here). compileall skips what is already current, so a re-sync costs seconds.
echo "[python-env] compiling bytecode (first time: a minute or two)" >&2
"$ROOT/.venv/bin/python" -m compileall -q -j 0 "$("$ROOT/.venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
echo "$want" > "$ROOT/.venv/.llmfleet-stamp"
