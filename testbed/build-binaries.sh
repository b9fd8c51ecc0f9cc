#!/usr/bin/env bash
# Builds the test bed's binaries (kube-apiserver, kube-controller-manager, kubectl, etcd, helm) from the Go
# module proxy into a cache outside the repo, keyed by version, so only the first run pays for the build.
# Prints the directory that holds the binaries on its last line.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KUBE_VERSION=v1.37.2   # keep in step with testbed/go/kube/go.mod
ETCD_VERSION=v3.7.0    # the etcd that Kubernetes v1.37 is tested with (its go.mod)
HELM_VERSION=v3.22.0
cache=${GRAPHCRED_CACHE:-$HOME/.cache/graphcred}
out="$cache/bin/k8s-$KUBE_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION"
mkdir -p "$out"
export GOFLAGS="${GOFLAGS:-} -trimpath" CGO_ENABLED=0

build() {  # name, module dir, package
  local name=$1 dir=$2 pkg=$3
  if [ -x "$out/$name" ]; then return; fi
  echo "testbed: building $name ($pkg) — the first build takes minutes" >&2
  local t0=$SECONDS
  (cd "$dir" && go build -ldflags='-s -w' -o "$out/$name.tmp" "$pkg")
  mv "$out/$name.tmp" "$out/$name"
  echo "testbed: built $name in $((SECONDS - t0)) s" >&2
}

kube_ldflags="-X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
for cmd in kube-apiserver kube-controller-manager kubectl; do
  if [ ! -x "$out/$cmd" ]; then
    echo "testbed: building $cmd $KUBE_VERSION — the first build takes minutes" >&2
    t0=$SECONDS
    (cd "$here/go/kube" && go build -ldflags="-s -w $kube_ldflags" -o "$out/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
    mv "$out/$cmd.tmp" "$out/$cmd"
    echo "testbed: built $cmd in $((SECONDS - t0)) s" >&2
  fi
done
build etcd "$here/go/etcd" .
if [ ! -x "$out/helm" ]; then
  echo "testbed: building helm $HELM_VERSION" >&2
  t0=$SECONDS
  GOBIN="$out" go install -ldflags='-s -w' "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "testbed: built helm in $((SECONDS - t0)) s" >&2
fi
echo "$out"
