#!/usr/bin/env bash
# Builds the pinned Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) from Go modules into a cache outside the clone, keyed by the content
# of this wrapper module. A warm machine never rebuilds; a fresh one builds once (minutes on 2 cores).
#
# Prints the bin directory on the last line of stdout. Progress goes to stderr.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
K8S_VERSION=v1.37.2
KWOK_VERSION=v0.8.0

if ! command -v go >/dev/null 2>&1; then
  echo "controlplane: Go is not installed; it is needed to build the control plane (go 1.26+)" >&2
  exit 1
fi

# The cache key covers what decides the binaries: the pinned modules and versions (and a layout
# number to bump when this script changes what it puts in the cache).
layout=1
key="$( { cat "$here/go.mod" "$here/go.sum"; echo "$K8S_VERSION $KWOK_VERSION $layout"; } | sha256sum | cut -c1-16)"
cache_root="${CUEBE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cuebe}"
bin="$cache_root/controlplane/$key/bin"
tools=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok kwok-stages.yaml)

complete=1
for t in "${tools[@]}"; do [ -e "$bin/$t" ] || complete=0; done
if [ "$complete" = 1 ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
export CGO_ENABLED=0
v="k8s.io/component-base/version"
ldflags="-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=37 \
 -X $v.gitTreeState=clean -X $v.buildDate=2026-01-01T00:00:00Z \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"

build() { # name package
  local name="$1" pkg="$2" start=$SECONDS
  [ -x "$bin/$name" ] && { echo "controlplane: $name cached" >&2; return 0; }
  echo "controlplane: building $name ($pkg) ..." >&2
  if ! (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg") >&2; then
    echo "controlplane: FAILED to build $name from $pkg (see the Go error above)" >&2
    exit 1
  fi
  mv "$bin/$name.tmp" "$bin/$name"
  echo "controlplane: built $name in $((SECONDS - start))s" >&2
}

(cd "$here" && go mod download) >&2 || {
  echo "controlplane: go mod download failed: a module in $here/go.mod is not served (see above)" >&2
  exit 1
}
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubectl k8s.io/kubernetes/cmd/kubectl
if [ ! -x "$bin/kwok" ]; then
  # kwok has no replace directives, so a plain install at its own pinned deps works.
  echo "controlplane: building kwok $KWOK_VERSION ..." >&2
  GOBIN="$bin" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2 || {
    echo "controlplane: FAILED to build kwok $KWOK_VERSION" >&2; exit 1; }
fi
if [ ! -e "$bin/kwok-stages.yaml" ]; then
  # kwok's own "fast" stages (nodes become Ready, pods run, complete and are deleted), taken from
  # the kwok module at the pinned version rather than copied into this repository.
  kwok_dir="$(cd / && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  stages="$kwok_dir/kustomize/stage"
  {
    for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
             pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      echo "---"
      cat "$stages/$f"
    done
  } > "$bin/kwok-stages.yaml.tmp"
  mv "$bin/kwok-stages.yaml.tmp" "$bin/kwok-stages.yaml"
fi
echo "$bin"
