#!/usr/bin/env bash
# Builds the test bed's binaries (kube-apiserver, kube-controller-manager, kubectl, etcd, helm) from the Go
# module proxy into a cache outside the repo, keyed by version, so only the first run pays for the build.
# Prints the directory that holds the binaries on its last line.
# `build-binaries.sh compat`: the compat bed instead (`make test-compat`): the oldest supported kube-apiserver
# (COMPAT_KUBE_VERSION, Chart.yaml's kubeVersion floor) beside the current etcd, controller manager, kubectl and helm.
# `build-binaries.sh node`: the current bed plus a node (graphcred_testbed.node): kubelet, kube-scheduler, containerd
# (with its shim and ctr), runc and a static pause binary; prints a directory holding all of them.
# `build-binaries.sh runc`: only runc (testbed/build-image.sh's BuildKit runs it); prints its path.
set -euo pipefail
shopt -s inherit_errexit  # and inside $(...): a failed step there must stop the build, not be cached
here=$(cd "$(dirname "$0")" && pwd)
KUBE_VERSION=v1.37.2   # keep in step with testbed/go/kube/go.mod
COMPAT_KUBE_VERSION=v1.30.14  # keep in step with testbed/go/kube-compat/go.mod and Chart.yaml's kubeVersion
ETCD_VERSION=v3.7.0    # the etcd that Kubernetes v1.37 is tested with (its go.mod)
HELM_VERSION=v3.22.0
# containerd 2.x, not Debian bookworm's 1.6.20: kubelet v1.37 still runs on a CRI without RuntimeConfig (1.x) but
# counts it as losing support in v1.38 (cmd/kubelet/app/server.go); 2.x also has restrict_oom_score_adj, which
# this machine needs (no CAP_SYS_RESOURCE: see graphcred_testbed/node.py)
CONTAINERD_VERSION=v2.4.2
RUNC_VERSION=v1.5.2  # the runc containerd v2.4.2 is tested with (its script/setup/runc-version)
flavour=${1:-current}
case $flavour in current|compat|node|runc) ;; *) echo "usage: $0 [compat|node|runc]" >&2; exit 2 ;; esac
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

build_runc() {  # prints runc's path (the node's and build-image.sh's BuildKit both run it)
  local dir="$cache/bin/runc-$RUNC_VERSION" t0
  if [ ! -x "$dir/runc" ]; then
    echo "testbed: building runc $RUNC_VERSION" >&2
    t0=$SECONDS
    # runc's nsenter is C and seccomp (RuntimeDefault profiles) links libseccomp: cgo, with libseccomp-dev
    # (Debian's). Not the `libpathrs` tag of runc's Makefile: that library is Rust, not packaged here.
    GOBIN="$dir" CGO_ENABLED=1 go install -buildmode=pie -tags 'seccomp urfave_cli_no_docs' \
      -ldflags='-s -w' "github.com/opencontainers/runc@$RUNC_VERSION"
    echo "testbed: built runc in $((SECONDS - t0)) s" >&2
  fi
  echo "$dir/runc"
}

if [ "$flavour" = runc ]; then
  build_runc
  exit 0
fi

for cmd in kube-apiserver kube-controller-manager kubectl; do
  build_kube "$cmd" "$KUBE_VERSION" "$here/go/kube" "$out"
done
build etcd "$here/go/etcd" .
# helm's own Makefile sets its version and the Kubernetes version it assumes for client-side rendering (`helm
# template`); without them it assumes v1.20, below the chart's kubeVersion floor, and `helm template` fails.
# The stamp tells a helm built with these flags from one an older cache holds.
if [ ! -x "$out/helm" ] || [ ! -e "$out/.helm-ldflags" ]; then
  echo "testbed: building helm $HELM_VERSION" >&2
  t0=$SECONDS
  kube_minor=$(echo "$KUBE_VERSION" | cut -d. -f2)
  GOBIN="$out" go install -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$kube_minor" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  touch "$out/.helm-ldflags"
  echo "testbed: built helm in $((SECONDS - t0)) s" >&2
fi
if [ "$flavour" = current ]; then
  echo "$out"
  exit 0
fi

if [ "$flavour" = node ]; then
  for cmd in kubelet kube-scheduler; do
    build_kube "$cmd" "$KUBE_VERSION" "$here/go/kube" "$out"
  done
  ctrd="$cache/bin/containerd-$CONTAINERD_VERSION"
  if [ ! -x "$ctrd/containerd" ] || [ ! -x "$ctrd/containerd-shim-runc-v2" ] || [ ! -x "$ctrd/ctr" ]; then
    echo "testbed: building containerd $CONTAINERD_VERSION" >&2
    t0=$SECONDS
    # the CRI plugin needs no cgo; leaving out btrfs and devmapper drops the snapshotters that would
    GOBIN="$ctrd" go install -tags 'no_btrfs no_devmapper' \
      -ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
      "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION"
    echo "testbed: built containerd in $((SECONDS - t0)) s" >&2
  fi
  runc_dir=$(dirname "$(build_runc)")
  pause_dir="$cache/bin/pause-$(sha256sum "$here/node/pause.c" | cut -c1-12)"
  if [ ! -x "$pause_dir/pause" ]; then
    mkdir -p "$pause_dir"
    gcc -static -Os -s -o "$pause_dir/pause.tmp" "$here/node/pause.c"
    mv "$pause_dir/pause.tmp" "$pause_dir/pause"
  fi
  node="$cache/bin/node-$(basename "$out")-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION"
  mkdir -p "$node"
  for name in etcd kube-apiserver kube-controller-manager kubectl helm kubelet kube-scheduler; do
    ln -sfn "$out/$name" "$node/$name"
  done
  for name in containerd containerd-shim-runc-v2 ctr; do
    ln -sfn "$ctrd/$name" "$node/$name"
  done
  ln -sfn "$runc_dir/runc" "$node/runc"
  ln -sfn "$pause_dir/pause" "$node/pause"
  echo "$node"
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
