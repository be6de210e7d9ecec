#!/usr/bin/env bash
# Creates or refreshes a second virtual environment, $LLMFLEET_CACHE/venv-lowest, with the
# LOWEST version of every direct dependency that pyproject.toml allows (operator, worker and dev
# extras; transitive dependencies at their newest), the project itself editable. `make
# test-lowest` runs the unit tests in it, so a floor in pyproject.toml is one the code really
# works with, not a guess that only the versions uv.lock pins ever exercise.
# Idempotent: does nothing when the venv already matches pyproject.toml and this clone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LLMFLEET_CACHE:-$HOME/.cache/llmfleet}"
# shellcheck source=versions.env
source "$ROOT/hack/versions.env"
PYTHON="${PYTHON:-python3}"
VENV="$CACHE/venv-lowest"
export UV_CACHE_DIR="$CACHE/uv-cache" UV_LINK_MODE=hardlink

# Installs uv (and brings .venv up to date, which the normal targets want anyway).
bash "$ROOT/hack/python-env.sh"
uv="$CACHE/uv-$UV_VERSION/bin/uv"

# Two stamps: what the resolution depends on (the floors, this script, the interpreter), and
# which clone the editable install points at. A run from another clone of the same commit (CI
# clones into a fresh temporary directory) only re-points the editable install: seconds.
deps_stamp() {
  { cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}"; "$PYTHON" -c 'import sys; print(sys.version)'; } \
    | sha256sum | cut -c1-16
}
want_deps="$(deps_stamp)"
want_root="$ROOT"
have_deps="$(cat "$VENV/.llmfleet-stamp" 2> /dev/null || true)"
have_root="$(cat "$VENV/.llmfleet-root" 2> /dev/null || true)"
if [[ "$have_deps" == "$want_deps" && "$have_root" == "$want_root" && -x "$VENV/bin/python" ]]; then
  exit 0
fi

if [[ "$have_deps" != "$want_deps" || ! -x "$VENV/bin/python" ]]; then
  echo "[lowest-env] building $VENV (first time downloads the lowest torch: a few minutes)" >&2
  # From scratch: `uv pip install` keeps whatever already satisfies a requirement, so after a
  # floor moves down or a transitive dependency changes, a reused venv would no longer hold
  # the lowest versions. Packages come hard-linked from the cache: about a minute, mostly
  # the bytecode.
  rm -f "$VENV/.llmfleet-stamp" "$VENV/.llmfleet-root"
  "$uv" venv --quiet --clear --python "$PYTHON" "$VENV"
  "$uv" pip install --quiet --python "$VENV/bin/python" --resolution lowest-direct \
    -e "${ROOT}[operator,worker,dev]"
  # Bytecode once, for the same reason as hack/python-env.sh (compileall skips what is current).
  echo "[lowest-env] compiling bytecode (first time: a minute or two)" >&2
  "$VENV/bin/python" -m compileall -q -j 0 "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null || true
  echo "$want_deps" > "$VENV/.llmfleet-stamp"
else
  echo "[lowest-env] pointing the editable install at $ROOT" >&2
  "$uv" pip install --quiet --python "$VENV/bin/python" --no-deps --reinstall-package llmfleet \
    -e "$ROOT"
fi
echo "$want_root" > "$VENV/.llmfleet-root"
