#!/usr/bin/env bash
# Builds the project's images daemonless with buildah into the local containers storage:
#   localhost/llmfleet/operator:dev   from Dockerfile.operator
#   localhost/llmfleet/worker:dev     from Dockerfile.worker
#   localhost/llmfleet/pause:1        the real nodes' pod sandbox (hack/pause)
# No base image can be pulled here, so the Dockerfiles' BASE is a Debian bookworm root with
# Python 3.11 bootstrapped once with mmdebstrap (cached in the containers storage, keyed by
# this script's recipe). uv's package cache, the one the project's .venv was filled from, is
# bound into the build, so torch and its CUDA libraries are never downloaded twice. Layers are
# cached: a rebuild with nothing changed takes seconds.
#
# Usage: hack/images.sh [operator|worker|pause]...   (default: all); prints one line per image:
#        NAME ID SIZE_MB
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LLMFLEET_CACHE:-$HOME/.cache/llmfleet}"
TAG="${LLMFLEET_IMAGE_TAG:-dev}"
log() { echo "[images] $*" >&2; }

# shellcheck source=versions.env
source "$ROOT/hack/versions.env"
bash "$ROOT/hack/apt.sh" images
bash "$ROOT/hack/containers-conf.sh"

# --- the base: what python:3.11-slim gives, from Debian's packages ---
# Docs, man pages, locales and Python's own test suite are left out: the operator image must
# stay small (<= 250 MB). libstdc++ is in python:3.11-slim too, and torch needs it.
base_recipe() {
  printf '%s\n' bookworm python3 python3-venv python-is-python3 ca-certificates libstdc++6 \
    'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright' \
    'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/locale/*' 'path-exclude=/usr/share/info/*'
}
BASE="localhost/llmfleet/base:bookworm-$(base_recipe | sha256sum | cut -c1-12)"
if ! podman image exists "$BASE"; then
  log "bootstrapping $BASE from Debian packages (first time only; about a minute)"
  start=$SECONDS
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  dpkgopts=(); while read -r opt; do dpkgopts+=(--dpkgopt="$opt"); done < <(base_recipe | grep '^path-')
  # shellcheck disable=SC2016 # the hook's $1 is mmdebstrap's, expanded by its shell
  mmdebstrap --quiet --variant=essential --mode=root \
    --include="$(base_recipe | sed -n '2,6p' | paste -sd,)" "${dpkgopts[@]}" \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/usr/lib/python3.11/test' \
    bookworm "$tmp/base.tar"
  podman import --quiet --change 'CMD ["python3"]' "$tmp/base.tar" "$BASE" >/dev/null
  log "base ready in $((SECONDS - start))s"
fi

# --- uv's image: the project's own uv binary, for the Dockerfiles' `COPY --from=uv` ---
UV_IMAGE="localhost/llmfleet/uv:$UV_VERSION"
ensure_uv_image() {
  bash "$ROOT/hack/python-env.sh"  # uv, and its cache filled with what uv.lock pins
  if ! podman image exists "$UV_IMAGE"; then
    local ctr; ctr="$(buildah from scratch)"
    buildah copy --quiet "$ctr" "$CACHE/uv-$UV_VERSION/bin/uv" /uv >/dev/null
    buildah commit --quiet --rm "$ctr" "$UV_IMAGE" >/dev/null
  fi
}

# --- the pod sandbox image of real nodes: a static Go binary in a scratch image ---
build_pause() {
  local image="localhost/llmfleet/pause:1" key
  key="$(sha256sum "$ROOT/hack/pause/main.go" | cut -c1-12)"
  if [[ "$(podman image inspect --format '{{index .Labels "llmfleet.io/source"}}' "$image" 2>/dev/null)" != "$key" ]]; then
    local out ctr; out="$(mktemp -d)"
    (cd "$ROOT/hack/pause" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" -o "$out/pause" main.go)
    ctr="$(buildah from scratch)"
    buildah copy --quiet "$ctr" "$out/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 --label "llmfleet.io/source=$key" "$ctr"
    buildah commit --quiet --rm "$ctr" "$image" >/dev/null
    rm -rf "$out"
  fi
  printf '%s %s %s\n' "$image" "$(podman image inspect --format '{{.Id}}' "$image" | cut -c1-12)" \
    "$(( $(podman image inspect --format '{{.Size}}' "$image") / 1000000 ))"
}

build() {  # build NAME: localhost/llmfleet/NAME:$TAG from Dockerfile.NAME
  local name="$1" image="localhost/llmfleet/$1:$TAG" start=$SECONDS old
  old="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
  ensure_uv_image
  mkdir -p "$CACHE/uv-cache"
  # --network host: the build reaches PyPI for what the cache lacks (hatchling) without a CNI
  # network of its own, trusting what this machine trusts (its CA bundle, bound for the build
  # only). --layers: each Dockerfile step is cached in the storage.
  buildah bud --quiet --layers --network host \
    --build-arg "BASE=$BASE" --build-arg "UV_IMAGE=$UV_IMAGE" \
    --build-arg UV_CACHE_DIR=/var/cache/llmfleet-uv --volume "$CACHE/uv-cache:/var/cache/llmfleet-uv" \
    --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    -f "$ROOT/Dockerfile.$name" -t "$image" "$ROOT" >/dev/null
  log "$image built in $((SECONDS - start))s"
  # buildah keeps the working container it makes for a `--mount=...,from=uv`: one per build.
  buildah containers --quiet --filter "ancestor=$UV_IMAGE" | xargs -r buildah rm >/dev/null
  # The image the tag named before is nobody's now: without this every worker rebuild would
  # leave 6 GB behind, and a few sessions fill the disk.
  if [[ -n "$old" && "$old" != "$(podman image inspect --format '{{.Id}}' "$image")" ]]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
  printf '%s %s %s\n' "$image" "$(podman image inspect --format '{{.Id}}' "$image" | cut -c1-12)" \
    "$(( $(podman image inspect --format '{{.Size}}' "$image") / 1000000 ))"
}

names=("$@"); ((${#names[@]})) || names=(operator worker pause)
for n in "${names[@]}"; do
  if [[ "$n" == pause ]]; then build_pause; else build "$n"; fi
done
