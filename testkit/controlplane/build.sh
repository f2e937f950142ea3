#!/usr/bin/env bash
# Builds the pinned Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok) from Go modules into a cache outside the clone, keyed by the content
# of this wrapper module. A warm machine never rebuilds; a fresh one builds once (about half an hour
# on 2 cores; about a minute when Go's build cache already holds the compiled packages).
#
# Prints the bin directory on the last line of stdout. Progress goes to stderr: which of the 6 steps
# is running and how long that step usually takes, so a first build does not look like a hang.
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

complete() {
  for t in "${tools[@]}"; do [ -e "$bin/$t" ] || return 1; done
}
if complete; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
# Two builds into the same cache (two test processes, `dev` next to `cargo test`) would write the
# same temporary files: the second waits for the first and then finds the binaries there.
if command -v flock >/dev/null 2>&1; then
  exec 9>"$cache_root/controlplane/$key/.build.lock"
  if ! flock -n 9; then
    echo "controlplane: another build into $bin is running; waiting for it to finish" >&2
    flock 9
  fi
  if complete; then
    echo "$bin"
    exit 0
  fi
fi

export CGO_ENABLED=0
v="k8s.io/component-base/version"
ldflags="-s -w -X $v.gitVersion=$K8S_VERSION -X $v.gitMajor=1 -X $v.gitMinor=37 \
 -X $v.gitTreeState=clean -X $v.buildDate=2026-01-01T00:00:00Z \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"

# Typical duration of each step on 2 cores with an empty Go build cache (a first build measured
# on a 2-core machine: 31 min in all). Later steps reuse what earlier ones compiled, so the figures
# hold for this order only; kwok's includes downloading its own modules. With a warm Go build cache
# each step is mostly linking: seconds (about a minute for all six, measured on the same machine).
steps=6
typical_etcd="3-4 min"
typical_kube_apiserver="13-16 min"
typical_kube_controller_manager="4-6 min"
typical_kube_scheduler="under 1 min"
typical_kubectl="1-2 min"
typical_kwok="5-7 min"
typical() { local var="typical_${1//-/_}"; echo "${!var}"; }

build_started=$SECONDS
elapsed() {
  local s=$((SECONDS - build_started))
  if [ "$s" -lt 120 ]; then echo "${s}s"; else echo "$((s / 60)) min"; fi
}
echo "controlplane: building the control plane into $bin ($steps steps; a first build takes about" \
  "half an hour on 2 cores, about a minute if Go's build cache is warm; only once per machine)" >&2

step() { # number name: announces a step
  echo "controlplane: building $2 (step $1 of $steps, typically $(typical "$2") on 2 cores" \
    "with a cold Go build cache; $(elapsed) elapsed so far)" >&2
}

build() { # step name package
  local n="$1" name="$2" pkg="$3" start=$SECONDS
  [ -x "$bin/$name" ] && { echo "controlplane: $name cached (step $n of $steps)" >&2; return 0; }
  step "$n" "$name"
  if ! (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg") >&2; then
    echo "controlplane: FAILED to build $name from $pkg (see the Go error above)" >&2
    exit 1
  fi
  mv "$bin/$name.tmp" "$bin/$name"
  echo "controlplane: built $name in $((SECONDS - start))s (step $n of $steps)" >&2
}

echo "controlplane: downloading the Go modules (before step 1; up to a few minutes on a fresh machine)" >&2
(cd "$here" && go mod download) >&2 || {
  echo "controlplane: go mod download failed: a module in $here/go.mod is not served (see above)" >&2
  exit 1
}
build 1 etcd go.etcd.io/etcd/server/v3
build 2 kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build 3 kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build 4 kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build 5 kubectl k8s.io/kubernetes/cmd/kubectl
if [ ! -x "$bin/kwok" ]; then
  start=$SECONDS
  step 6 kwok
  # kwok has no replace directives, so a plain install at its own pinned deps works.
  GOBIN="$bin" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2 || {
    echo "controlplane: FAILED to build kwok $KWOK_VERSION" >&2; exit 1; }
  echo "controlplane: built kwok in $((SECONDS - start))s (step 6 of $steps)" >&2
else
  echo "controlplane: kwok cached (step 6 of $steps)" >&2
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
echo "controlplane: the control plane is ready in $bin (built in $(elapsed))" >&2
echo "$bin"
