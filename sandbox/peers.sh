#!/usr/bin/env bash
# Build peer tools compared in docs/benchmarks.md from their source, into the cache outside
# git (never into the repository). A warm cache is a no-op.
#
#   sandbox/peers.sh kuik          enix/kube-image-keeper: its manager binary (controllers + webhook)
#   sandbox/peers.sh patcher       titansoft imagepullsecret-patcher (not on the Go module proxy)
#   sandbox/peers.sh descheduler   sigs.k8s.io/descheduler at DESCHEDULER_VERSION (versions.env)
#
# KUIK_SRC may point at an existing checkout; otherwise it is cloned from KUIK_REPO
# (default https://github.com/enix/kube-image-keeper) at KUIK_REF (default: its main branch).
# PATCHER_SRC likewise may point at a checkout of
# https://github.com/titansoft-pte-ltd/imagepullsecret-patcher; otherwise it is cloned from
# PATCHER_REPO (default that address) at PATCHER_REF (default: its default branch). Its Go
# dependencies come from the module proxy. Each build prints the binary's path on stdout.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
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

build_patcher() {
  local src="${PATCHER_SRC:-$cache/src/imagepullsecret-patcher}"
  if [ ! -f "$src/go.mod" ]; then
    log "cloning ${PATCHER_REPO:-https://github.com/titansoft-pte-ltd/imagepullsecret-patcher} into $src"
    git clone -q "${PATCHER_REPO:-https://github.com/titansoft-pte-ltd/imagepullsecret-patcher}" "$src"
  fi
  if [ -n "${PATCHER_REF:-}" ]; then git -C "$src" checkout -q "$PATCHER_REF"; fi
  local rev; rev="$(git -C "$src" rev-parse --short=12 HEAD 2>/dev/null || echo local)"
  local out="$cache/bin/imagepullsecret-patcher-$rev"
  if [ -x "$out/imagepullsecret-patcher" ]; then echo "$out/imagepullsecret-patcher"; return 0; fi
  log "compiling imagepullsecret-patcher $rev"
  # -mod=mod: the checkout's go.sum may predate the toolchain; the proxy fills it in. The
  # build never writes into the checkout (a copy is built).
  local work; work="$(mktemp -d)"
  (cd "$src" && git archive HEAD 2>/dev/null | tar -x -C "$work") || cp -r "$src/." "$work"
  (cd "$work" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w" \
     -o "$out.tmp/imagepullsecret-patcher" .)
  rm -rf "$work" "$out"; mv "$out.tmp" "$out"
  ln -sfn "imagepullsecret-patcher-$rev" "$cache/bin/imagepullsecret-patcher"
  echo "$out/imagepullsecret-patcher"
}

build_descheduler() {
  # A wrapper module, as sandbox/build.sh does for Kubernetes: descheduler's go.mod has one
  # replace (k8s.io/kube-openapi) that `go install module@version` refuses, so the wrapper
  # repeats it with the same pin.
  local v="$DESCHEDULER_VERSION"
  local out="$cache/bin/descheduler-$v"
  if [ -x "$out/descheduler" ]; then echo "$out/descheduler"; return 0; fi
  local src="$cache/src/descheduler-$v"; mkdir -p "$src"
  (cd "$src"
   if [ ! -f go.mod ]; then
     go mod init pullmedic.local/deschedulerbuild >/dev/null 2>&1
     go mod download "sigs.k8s.io/descheduler@$v"
     local dir; dir="$(go mod download -json "sigs.k8s.io/descheduler@$v" \
       | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
     grep '^replace ' "$dir/go.mod" >> go.mod
   fi
   go get "sigs.k8s.io/descheduler/cmd/descheduler@$v"
   log "compiling descheduler $v (slow on a cold cache)"
   go build -trimpath \
     -ldflags "-s -w -X sigs.k8s.io/descheduler/pkg/version.version=$v" \
     -o "$out.tmp/descheduler" sigs.k8s.io/descheduler/cmd/descheduler)
  rm -rf "$out"; mv "$out.tmp" "$out"
  echo "$out/descheduler"
}

case "${1:-}" in
  kuik) build_kuik ;;
  patcher) build_patcher ;;
  descheduler) build_descheduler ;;
  *) echo "usage: $0 kuik|patcher|descheduler" >&2; exit 2 ;;
esac
