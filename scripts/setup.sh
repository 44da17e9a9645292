#!/usr/bin/env bash
# Set up a fresh machine: Python venv with the operator and dev tools, and the sandbox's
# pinned Go builds (cached in ~/.cache/pullmedic; a warm cache makes this a no-op).
# `--demo` builds only what the demo runs (no kubectl, helm or test-only registries; each
# is built the first time something needs it).
set -euo pipefail
components=""
if [ "${1:-}" = "--demo" ]; then
  components="etcd registry kubernetes pause"
  export KUBE_COMMANDS="kube-apiserver kube-controller-manager kube-scheduler kubelet"
fi
cd "$(dirname "$0")/.."
command -v go >/dev/null || { echo "Go >= 1.26 is required (https://go.dev/doc/install)" >&2; exit 1; }
# The sandbox's real node runs on Debian's containerd, runc, CNI plugins and busybox (the
# test images' userland). Installed only when missing; where they cannot be installed (not
# root, no apt-get) the demo falls back to the emulator and the tests fail with the reason.
node_pkgs=""
for pkg in containerd runc containernetworking-plugins busybox-static; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || node_pkgs="$node_pkgs $pkg"
done
setup_start=$(date +%s)
step() { echo "[setup] $1 ($(( $(date +%s) - $2 )) s)" >&2; }
if [ -n "$node_pkgs" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    t0=$(date +%s)
    echo "[setup] installing$node_pkgs (Debian packages)" >&2
    export DEBIAN_FRONTEND=noninteractive
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $node_pkgs >/dev/null \
      || { apt-get update -q >/dev/null \
           && apt-get install -y -q --no-install-recommends $node_pkgs >/dev/null; } \
      || echo "[setup] apt-get failed: the sandbox will use the node emulator" >&2
    step "node packages installed" "$t0"
  else
    echo "[setup] not installing$node_pkgs (needs root and apt-get): the sandbox will use the node emulator" >&2
  fi
fi
py="${PYTHON:-python3}"
t0=$(date +%s)
echo "[setup] Python venv .venv: the operator and its test tools (pip)" >&2
if [ ! -x .venv/bin/python ]; then "$py" -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
step "Python venv ready" "$t0"
t0=$(date +%s)
if [ ! -d "${PULLMEDIC_CACHE:-$HOME/.cache/pullmedic}/bin" ]; then
  echo "[setup] first run: compiling the sandbox from Go modules (the longest step;" \
       "each component prints its time; later runs reuse the cache)" >&2
fi
# shellcheck disable=SC2086
bash sandbox/build.sh $components
step "sandbox binaries ready" "$t0"
step "setup done" "$setup_start"
