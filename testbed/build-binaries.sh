#!/usr/bin/env bash
# Builds the test bed's binaries (kube-apiserver, kube-controller-manager, kubectl, etcd, helm) from the Go
# module proxy into a cache outside the repo, keyed by version, so only the first run pays for the build.
# Prints the directory that holds the binaries on its last line.
# `build-binaries.sh compat`: the compat bed instead (`make test-compat`): the oldest supported kube-apiserver
# (COMPAT_KUBE_VERSION, Chart.yaml's kubeVersion floor) beside the current etcd, controller manager, kubectl and helm.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KUBE_VERSION=v1.37.2   # keep in step with testbed/go/kube/go.mod
COMPAT_KUBE_VERSION=v1.30.14  # keep in step with testbed/go/kube-compat/go.mod and Chart.yaml's kubeVersion
ETCD_VERSION=v3.7.0    # the etcd that Kubernetes v1.37 is tested with (its go.mod)
HELM_VERSION=v3.22.0
flavour=${1:-current}
case $flavour in current|compat) ;; *) echo "usage: $0 [compat]" >&2; exit 2 ;; esac
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

build_kube() {  # command, version, module dir, output dir
  local cmd=$1 version=$2 dir=$3 dest=$4 minor
  if [ -x "$dest/$cmd" ]; then return; fi
  minor=$(echo "$version" | cut -d. -f2)
  local ldflags="-X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$version"
  echo "testbed: building $cmd $version — the first build takes minutes" >&2
  local t0=$SECONDS
  mkdir -p "$dest"
  (cd "$dir" && go build -ldflags="-s -w $ldflags" -o "$dest/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
  mv "$dest/$cmd.tmp" "$dest/$cmd"
  echo "testbed: built $cmd in $((SECONDS - t0)) s" >&2
}

for cmd in kube-apiserver kube-controller-manager kubectl; do
  build_kube "$cmd" "$KUBE_VERSION" "$here/go/kube" "$out"
done
build etcd "$here/go/etcd" .
if [ ! -x "$out/helm" ]; then
  echo "testbed: building helm $HELM_VERSION" >&2
  t0=$SECONDS
  GOBIN="$out" go install -ldflags='-s -w' "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "testbed: built helm in $((SECONDS - t0)) s" >&2
fi
if [ "$flavour" = current ]; then
  echo "$out"
  exit 0
fi

# Only kube-apiserver is built at the old version (the costly part of a cold CI run): the current controller
# manager, kubectl, etcd and helm work against it. The bed reads one directory, so it gets links to them.
compat="$cache/bin/k8s-$COMPAT_KUBE_VERSION"
build_kube kube-apiserver "$COMPAT_KUBE_VERSION" "$here/go/kube-compat" "$compat"
bed="$cache/bin/compat-k8s-$COMPAT_KUBE_VERSION-on-$(basename "$out")"
mkdir -p "$bed"
ln -sfn "$compat/kube-apiserver" "$bed/kube-apiserver"
for name in etcd kube-controller-manager kubectl helm; do
  ln -sfn "$out/$name" "$bed/$name"
done
echo "$bed"
