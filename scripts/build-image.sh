#!/usr/bin/env bash
# Build the operator image from the Dockerfile without Docker and without a registry.
#
# The Dockerfile's two bases are made here from Debian 12 packages with mmdebstrap and
# tagged with the names the Dockerfile uses, so `buildah bud --pull=never` finds them:
#   debian:12-slim                              minbase, docs/man/locales left out (as slim)
#   gcr.io/distroless/python3-debian12:nonroot  python3 + ca-certificates, uid 65532 nonroot
# Each base rootfs is cached in $PULLMEDIC_CACHE/images/ keyed by its recipe; the
# operator image is rebuilt only when the build inputs change (tag pullmedic:<hash>).
#
# Reproducible: SOURCE_DATE_EPOCH (default: the time of the last commit that changed the
# build inputs) is the time of every layer's files and of the image's history (buildah
# --timestamp); the Dockerfile writes no other time (bytecode without mtimes, an SBOM
# without a date), so two builds of one commit on the same bases give the same image id.
# The image is cached whole, keyed by its inputs; buildah's layer cache is never used
# (bud --no-cache): its key for an ARG, LABEL or COPY step does not carry a build
# argument's value, so steps cached at another epoch (another commit's file times and
# history) matched whole. --no-cache ignores the cached image too and builds again from
# the bases (the check of reproducibility, tests/integration/test_image.py).
#
#   scripts/build-image.sh [--tag NAME] [--isolation chroot|oci] [--no-cache]   # prints the image id
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${PULLMEDIC_CACHE:-$HOME/.cache/pullmedic}"
tag="localhost/pullmedic:0.1.0"
isolation="${BUILDAH_ISOLATION:-chroot}"
fresh=0
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) tag="$2"; shift 2 ;;
    --isolation) isolation="$2"; shift 2 ;;
    --no-cache) fresh=1; shift ;;
    *) echo "usage: $0 [--tag NAME] [--isolation chroot|oci] [--no-cache]" >&2; exit 2 ;;
  esac
done
# The time of the last commit that changed what the image is built from: a commit that
# changes nothing in it keeps the same epoch, so the cached image stays the right one.
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct -- Dockerfile .dockerignore pyproject.toml \
  README.md requirements.lock requirements-sbom.lock operator 2>/dev/null || true)}"
epoch="${epoch:-0}"
log() { printf '[image] %s\n' "$*" >&2; }

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} (Debian packages)"
  apt-get install -y -q --no-install-recommends "${need[@]}" >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${need[@]}" >&2; }
fi

# A store of our own: nothing here touches another user's containers/storage.
store=(--root "$cache/buildah/storage" --runroot "${XDG_RUNTIME_DIR:-/tmp}/pullmedic-buildah" --storage-driver vfs)
bh() { buildah "${store[@]}" "$@"; }
mkdir -p "$cache/images"

suite=bookworm
mirrors=(
  "deb http://deb.debian.org/debian $suite main"
  "deb http://deb.debian.org/debian $suite-updates main"
  "deb http://deb.debian.org/debian-security $suite-security main"
)
# merged /usr by mmdebstrap's hook, not the usrmerge package (which pulls in perl, 47 MB).
slim_opts=(--variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log')
runtime_opts=("${slim_opts[@]}" --include=python3,ca-certificates,tzdata
  --customize-hook='echo "nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin" >> "$1"/etc/passwd'
  --customize-hook='echo "nonroot:x:65532:" >> "$1"/etc/group'
  --customize-hook='install -d -o 65532 -g 65532 "$1"/home/nonroot'
  # No package manager at run time, as in distroless.
  --customize-hook='chroot "$1" dpkg --purge apt libapt-pkg6.0 debian-archive-keyring gpgv')

# base NAME USER OPTS...: make (or reuse) the rootfs and tag it as NAME in the store.
base() {
  local name="$1" user="$2"; shift 2
  local key; key="$(printf '%s\n' "$suite" "${mirrors[@]}" "$@" | sha256sum | cut -c1-16)"
  local tarball="$cache/images/${name//[\/:]/_}-$key.tar"
  local label="pullmedic.base.key=$key"
  if bh inspect --type image --format '{{index .ImageAnnotations "pullmedic.base.key"}}' "$name" 2>/dev/null \
      | grep -qx "$key"; then
    return 0
  fi
  if [ ! -s "$tarball" ]; then
    local t0; t0=$(date +%s); log "$name: mmdebstrap $suite (once per recipe)"
    rm -f "$cache/images/${name//[\/:]/_}-"*.tar*  # older recipes of this base
    mmdebstrap --quiet --format=tar "$@" "$suite" "$tarball.tmp" "${mirrors[@]}" >&2
    mv "$tarball.tmp" "$tarball"; log "$name: rootfs in $(( $(date +%s) - t0 )) s"
  fi
  local ctr mnt; ctr="$(bh from --pull=never scratch)"
  mnt="$(bh mount "$ctr")"; tar -C "$mnt" -xpf "$tarball"; bh umount "$ctr" >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --user "$user" --annotation "$label" --created-by "mmdebstrap $suite" "$ctr"
  bh commit --quiet --rm "$ctr" "$name" >/dev/null
  log "$name: tagged from $(basename "$tarball")"
}

t0=$(date +%s)
base docker.io/library/debian:12-slim 0:0 "${slim_opts[@]}"
base gcr.io/distroless/python3-debian12:nonroot 65532:65532 "${runtime_opts[@]}"

# The build inputs: what the Dockerfile copies (as .dockerignore allows) and the recipe.
inputs="$( { echo "$epoch"; cat Dockerfile .dockerignore pyproject.toml README.md "$0" \
    requirements.lock requirements-sbom.lock;
  find operator -name '*.py' -o -name py.typed | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -c1-16)"
keyed="localhost/pullmedic:build-$inputs"
if [ "$fresh" = 1 ]; then
  keyed="localhost/pullmedic:fresh-$inputs"
  bh rmi "$keyed" >/dev/null 2>&1 || true
fi
if ! bh inspect --type image "$keyed" >/dev/null 2>&1; then
  log "building $keyed (isolation $isolation, SOURCE_DATE_EPOCH $epoch)"
  t1=$(date +%s)
  # pip reaches PyPI trusting this machine's CA bundle (which may hold a proxy's CA),
  # mounted beside the image's own bundle: apt's ca-certificates rewrites that one.
  conf="$(mktemp)"; trap 'rm -f "$conf"' EXIT
  printf '[global]\ncert = /run/pullmedic-build/ca.crt\n' > "$conf"
  vols=(-v /etc/ssl/certs/ca-certificates.crt:/run/pullmedic-build/ca.crt:ro
        -v "$conf:/etc/pip.conf:ro")
  # --layers: one layer per instruction in the image; --no-cache: none taken from a cache.
  bh bud --quiet --pull=never --isolation "$isolation" --layers --no-cache "${vols[@]}" \
    --timestamp "$epoch" --build-arg "PULLMEDIC_BUILD_EPOCH=$epoch" \
    -f Dockerfile -t "$keyed" . >&2
  log "image built in $(( $(date +%s) - t1 )) s"
fi
bh tag "$keyed" "$tag"
# Older builds of other inputs go, and so do the unnamed intermediate images of every build
# (no layer cache is used; with vfs each is a whole copy of its filesystem).
bh images --format '{{.Name}}:{{.Tag}}' | awk -v k="-$inputs" '$1 ~ /^localhost\/pullmedic:(build|fresh)-/ && substr($1, length($1) - length(k) + 1) != k {print $1}' \
  | xargs -r buildah "${store[@]}" rmi >/dev/null 2>&1 || true
bh rmi --prune >/dev/null 2>&1 || true
size="$(bh images --format '{{.Name}}:{{.Tag}} {{.Size}}' | awk -v k="$keyed" '$1 == k {print $2, $3; exit}')"
log "$tag ready in $(( $(date +%s) - t0 )) s (size $size uncompressed)"
bh inspect --type image --format "{{.FromImageID}}" "$keyed"; echo
