#!/usr/bin/env bash
# `make test`: the whole suite on the current bed, then the tests marked `compat` again on a bed whose
# kube-apiserver is the oldest supported minor (Chart.yaml's kubeVersion floor), then the node tests (tests/node,
# `-m node`: a bed with a real node, the chart installed with the image built from the Dockerfile). On the first
# run what those need builds at the lowest CPU priority while the main suite runs (the suite mostly waits on its
# bed): the compat kube-apiserver (about 10 CPU-minutes), the node's binaries (kubelet, kube-scheduler,
# containerd, runc) and the image (BuildKit, a Debian base). With test arguments (PYTEST_ARGS) only those run,
# on the current bed.
# Usage: scripts/test.sh VENV_BIN [pytest args...]
set -uo pipefail
bin=$1
shift
cd "$(dirname "$0")/.." || exit 1

no_tests() {  # pytest exits 5 when it collected nothing: that must fail, not pass silently
  echo "make test: pytest collected no tests ($1)" >&2
  exit 1
}

if [ $# -gt 0 ]; then
  "$bin/pytest" "$@"
  rc=$?
  [ $rc -eq 5 ] && no_tests "$*"
  exit $rc
fi

log=${GRAPHCRED_CACHE:-$HOME/.cache/graphcred}/build-compat.log
mkdir -p "$(dirname "$log")"
set -m  # the build gets a process group of its own, so that it can be stopped as a whole
nice -n 19 bash -c 'set -e; bash testbed/build-binaries.sh compat; bash testbed/build-binaries.sh node
  time bash testbed/build-image.sh' >"$log" 2>&1 &
build=$!
set +m
trap 'kill -- -$build 2>/dev/null' EXIT
# bash runs no EXIT trap when a signal kills it: turn them into exits (make passes SIGTERM on, e.g. a CI cancel)
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

"$bin/pytest"
rc=$?
[ $rc -eq 5 ] && no_tests "the whole suite"
[ $rc -ne 0 ] && exit $rc

echo "make test: waiting for the builds of the compat kube-apiserver, the node and the image (log: $log)" >&2
if ! wait $build; then
  cat "$log" >&2
  echo "make test: building the compat kube-apiserver, the node or the image failed" >&2
  exit 1
fi
grep -E "^build-image: (built|size|done)|^real" "$log" >&2 || true
compat_bin=$(bash testbed/build-binaries.sh compat 2>/dev/null | tail -1)
echo "== the compat tests on $("$compat_bin/kube-apiserver" --version)" >&2
GRAPHCRED_TESTBED_KUBE=compat "$bin/pytest" -m compat tests/e2e
rc=$?
[ $rc -eq 5 ] && no_tests "-m compat"
[ $rc -ne 0 ] && exit $rc

echo "== the node tests (a real node; the chart with the image built from the Dockerfile)" >&2
"$bin/pytest" -m node tests/node
rc=$?
[ $rc -eq 5 ] && no_tests "-m node"
exit $rc
