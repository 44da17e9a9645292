#!/usr/bin/env bash
# Compile the sandbox's control plane, node programs and registry from their Go modules
# into a cache outside git. Each component is built once per pinned version; a warm cache
# is a no-op.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
cache="${PULLMEDIC_CACHE:-$HOME/.cache/pullmedic}"
mkdir -p "$cache/bin" "$cache/src"
export CGO_ENABLED=0
log() { printf '[build] %s\n' "$*" >&2; }

build_etcd() {
  local out="$cache/bin/etcd-$ETCD_VERSION"
  [ -x "$out/etcd" ] && return 0
  local src="$cache/src/etcd-$ETCD_VERSION"; mkdir -p "$src"
  (cd "$src"
   [ -f go.mod ] || go mod init pullmedic.local/etcdbuild >/dev/null 2>&1
   go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
   go build -trimpath -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3)
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_kubernetes() {
  # One wrapper module per version for the control plane and the node: kube-apiserver,
  # kube-controller-manager, kube-scheduler, kubelet and kubectl. Only missing binaries are built.
  local out="$cache/bin/kubernetes-$KUBERNETES_VERSION"
  # KUBE_COMMANDS narrows the set (the demo needs no kubectl; it is built when first used).
  local want="${KUBE_COMMANDS:-kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl}"
  local missing="" c
  for c in $want; do [ -x "$out/$c" ] || missing="$missing $c"; done
  [ -z "$missing" ] && return 0
  local src="$cache/src/kubernetes-$KUBERNETES_VERSION"; mkdir -p "$src"
  (cd "$src"
   if [ ! -f go.mod ]; then
     go mod init pullmedic.local/kubebuild >/dev/null 2>&1
     for m in api apiextensions-apiserver apimachinery apiserver cli-runtime client-go \
              cloud-provider cluster-bootstrap code-generator component-base component-helpers \
              controller-manager cri-api cri-client cri-streaming csi-translation-lib \
              dynamic-resource-allocation endpointslice externaljwt kms kube-aggregator \
              kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics \
              mount-utils pod-security-admission sample-apiserver sample-cli-plugin \
              sample-controller streaming; do
       echo "replace k8s.io/$m => k8s.io/$m $KUBERNETES_STAGING_VERSION" >> go.mod
     done
   fi
   local pkgs=("k8s.io/kubernetes@$KUBERNETES_VERSION")
   for c in $missing; do pkgs+=("k8s.io/kubernetes/cmd/$c@$KUBERNETES_VERSION"); done
   go get "${pkgs[@]}"
   local minor; minor="$(echo "$KUBERNETES_VERSION" | cut -d. -f2)"
   local ld="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
     -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
     -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
   for c in $missing; do
     [ -x "$out.tmp/$c" ] && continue
     local b0; b0=$(date +%s)
     log "compiling $c $KUBERNETES_VERSION (slow on a cold cache)"
     go build -trimpath -ldflags "$ld" -o "$out.tmp/$c" "k8s.io/kubernetes/cmd/$c"
     log "$c compiled in $(( $(date +%s) - b0 )) s"
   done)
  mkdir -p "$out"
  for c in $missing; do mv "$out.tmp/$c" "$out/$c"; done
  rmdir "$out.tmp"
}

build_pause() {
  # The pod sandbox ("pause") program, pushed as the node's sandbox image at start.
  local out="$cache/bin/pause-$PAUSE_VERSION"
  [ -x "$out/pause" ] && return 0
  (cd "$here/pause" && go build -trimpath -ldflags "-s -w" -o "$out.tmp/pause" .)
  rm -rf "$out"; mv "$out.tmp" "$out"
}

build_registry() {
  local out="$cache/bin/registry-$DISTRIBUTION_VERSION"
  [ -x "$out/registry" ] && return 0
  GOBIN="$out.tmp" go install "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# go-containerregistry's registry, a second implementation for the prober's tests
# (sandbox/ggcr wraps it; its go.mod pins the module at GGCR_VERSION).
build_ggcr() {
  local out="$cache/bin/ggcr-$GGCR_VERSION"
  [ -x "$out/ggcr" ] && return 0
  grep -q "go-containerregistry $GGCR_VERSION" "$here/ggcr/go.mod" \
    || { echo "sandbox/ggcr/go.mod does not pin $GGCR_VERSION" >&2; return 1; }
  (cd "$here/ggcr" && go build -trimpath -ldflags "-s -w" -o "$out.tmp/ggcr" .)
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# helm, for the chart's tests (charts/pullmedic): lint and template need no cluster.
build_helm() {
  local out="$cache/bin/helm-$HELM_VERSION"
  [ -x "$out/helm" ] && return 0
  GOBIN="$out.tmp" go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# promtool, for `promtool test rules` on the alerts (manifests/overlays/monitoring): not
# part of the default set, built the first time a test asks for it. No service-discovery
# plugins (remove_all_sd): rule tests never discover targets.
build_promtool() {
  local out="$cache/bin/promtool-$PROMETHEUS_VERSION"
  [ -x "$out/promtool" ] && return 0
  local rest="${PROMETHEUS_VERSION#v0.}" minor patch
  minor="${rest%%.*}"; patch="${rest#*.}"
  GOBIN="$out.tmp" go install -trimpath -tags remove_all_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=3.$((minor - 300)).$patch" \
    "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# The kubelet's ECR credential provider plugin. `go install module@version` refuses the
# module (its go.mod has a replace), so a wrapper module requires it and repeats that replace.
build_ecr() {
  local out="$cache/bin/ecr-credential-provider-$CLOUD_PROVIDER_AWS_VERSION"
  [ -x "$out/ecr-credential-provider" ] && return 0
  local src="$cache/src/ecr-credential-provider-$CLOUD_PROVIDER_AWS_VERSION"; mkdir -p "$src"
  (cd "$src"
   if [ ! -f go.mod ]; then
     go mod init pullmedic.local/ecrbuild >/dev/null 2>&1
     echo "replace github.com/google/cel-go => github.com/cel-expr/cel-go v0.31.0" >> go.mod
   fi
   go get "k8s.io/cloud-provider-aws/cmd/ecr-credential-provider@$CLOUD_PROVIDER_AWS_VERSION"
   local b0; b0=$(date +%s)
   log "compiling ecr-credential-provider $CLOUD_PROVIDER_AWS_VERSION"
   go build -trimpath -ldflags "-s -w" -o "$out.tmp/ecr-credential-provider" \
     k8s.io/cloud-provider-aws/cmd/ecr-credential-provider
   log "ecr-credential-provider compiled in $(( $(date +%s) - b0 )) s")
  rm -rf "$out"; mv "$out.tmp" "$out"
}

# moto_server, the AWS API stand-in, in its own venv (its botocore and the operator's
# kubernetes client want different python-dateutil majors).
build_moto() {
  local out="$cache/bin/moto-$MOTO_VERSION"
  [ -f "$out/.complete" ] && return 0
  # A venv names its interpreter by path, so it is built in place; .complete marks it whole.
  rm -rf "$out"
  "${PYTHON:-python3}" -m venv "$out"
  "$out/bin/pip" install -q "moto[server,ecr]==$MOTO_VERSION"
  touch "$out/.complete"
}

start=$(date +%s)
for c in "${@:-etcd registry kubernetes pause helm ggcr ecr moto}"; do
  for one in $c; do
    t0=$(date +%s); log "$one: start"
    "build_$one"
    log "$one: ready in $(( $(date +%s) - t0 )) s"
  done
done
log "all components ready in $(( $(date +%s) - start )) s (cache: $cache)"
