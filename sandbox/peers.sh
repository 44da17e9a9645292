#!/usr/bin/env bash
# Build peer tools compared in docs/benchmarks.md from their source, into the cache outside
# git (never into the repository). A warm cache is a no-op.
#
#   sandbox/peers.sh kuik    enix/kube-image-keeper: its manager binary (controllers + webhook)
#
# KUIK_SRC may point at an existing checkout; otherwise it is cloned from KUIK_REPO
# (default https://github.com/enix/kube-image-keeper) at KUIK_REF (default: its main branch).
set -euo pipefail
cache="${PULLMEDIC_CACHE:-$HOME/.cache/pullmedic}"
mkdir -p "$cache/bin" "$cache/src"
log() { printf '[peers] %s\n' "$*" >&2; }

build_kuik() {
  local src="${KUIK_SRC:-$cache/src/kube-image-keeper}"
  if [ ! -f "$src/go.mod" ]; then
    log "cloning ${KUIK_REPO:-https://github.com/enix/kube-image-keeper} into $src"
    git clone -q "${KUIK_REPO:-https://github.com/enix/kube-image-keeper}" "$src"
  fi
  if [ -n "${KUIK_REF:-}" ]; then git -C "$src" checkout -q "$KUIK_REF"; fi
  local rev; rev="$(git -C "$src" rev-parse --short=12 HEAD)"
  local out="$cache/bin/kuik-$rev"
  if [ -x "$out/manager" ]; then echo "$out/manager"; return 0; fi
  log "compiling kube-image-keeper $rev (cmd/main.go)"
  (cd "$src" && CGO_ENABLED=0 go build -trimpath -o "$out.tmp/manager" ./cmd)
  cp -r "$src/config/crd/bases" "$out.tmp/crds"
  rm -rf "$out"; mv "$out.tmp" "$out"
  ln -sfn "kuik-$rev" "$cache/bin/kuik"
  echo "$out/manager"
}

case "${1:-}" in
  kuik) build_kuik ;;
  *) echo "usage: $0 kuik" >&2; exit 2 ;;
esac
