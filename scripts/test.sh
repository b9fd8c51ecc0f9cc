#!/usr/bin/env bash
# `make test`: three phases, each on beds of its own, the last two beside the first:
# - the whole suite, on GRAPHCRED_TEST_WORKERS pytest-xdist workers (3 by default), each with its own bed: the
#   suite mostly waits on its bed (token lifetimes, retries, restarts), so three beds share 2 cores well. Each
#   worker starts with a contiguous share of the tests (the `long` ones first, tests/conftest.py) and takes over
#   half of another's rest when it runs out (--dist worksteal): a module's tests mostly stay on one worker;
# - the tests marked `compat` again, on a bed whose kube-apiserver is the oldest supported minor (Chart.yaml's
#   kubeVersion floor);
# - the node tests (tests/node, `-m node`: a bed with a real node, the chart installed with the image built from
#   the Dockerfile).
# The compat and node phases run one after the other while the whole suite runs, their output in log files shown
# when they end. On the first run what they need builds first, at the lowest CPU priority: the compat
# kube-apiserver (about 10 CPU-minutes), the node's binaries (kubelet, kube-scheduler, containerd, runc) and the
# image (BuildKit, a Debian base). `make test` fails if any phase fails or collects no tests.
# With test arguments (PYTEST_ARGS) only those run, on the current bed, in one process.
# Usage: scripts/test.sh VENV_BIN [pytest args...]
set -uo pipefail
bin=$1
shift
cd "$(dirname "$0")/.." || exit 1

no_tests() {  # pytest exits 5 when it collected nothing: that must fail, not pass silently
  echo "make test: pytest collected no tests ($1)" >&2
}

if [ $# -gt 0 ]; then
  "$bin/pytest" "$@"
  rc=$?
  [ $rc -eq 5 ] && no_tests "$*" && exit 1
  exit $rc
fi

logs=$(mktemp -d "${TMPDIR:-/tmp}/graphcred-test.XXXXXX")
build_log=${GRAPHCRED_CACHE:-$HOME/.cache/graphcred}/build-compat.log
mkdir -p "$(dirname "$build_log")"

# The compat and node phases: the builds at nice 19, the tests themselves at normal priority (they time things).
# Each phase's exit code goes to a file: the main shell reads them after its own phase.
beside() {
  if ! nice -n 19 bash -c 'set -e; bash testbed/build-binaries.sh compat; bash testbed/build-binaries.sh node
      time bash testbed/build-image.sh' >"$build_log" 2>&1; then
    echo 1 >"$logs/build.rc"
    return
  fi
  echo 0 >"$logs/build.rc"
  local t=$SECONDS
  GRAPHCRED_TESTBED_KUBE=compat "$bin/pytest" -m compat tests/e2e >"$logs/compat.log" 2>&1
  echo $? >"$logs/compat.rc"
  echo "(the compat phase took $((SECONDS - t)) s, from $((t - start)) s after the start)" >>"$logs/compat.log"
  t=$SECONDS
  "$bin/pytest" -m node tests/node >"$logs/node.log" 2>&1
  echo $? >"$logs/node.rc"
  echo "(the node phase took $((SECONDS - t)) s, from $((t - start)) s after the start)" >>"$logs/node.log"
}

start=$SECONDS
set -m  # the compat and node phases get a process group of their own, so that they can be stopped as a whole
beside &
side=$!
set +m
trap 'kill -- -$side 2>/dev/null; rm -rf "$logs"' EXIT
# bash runs no EXIT trap when a signal kills it: turn them into exits (make passes SIGTERM on, e.g. a CI cancel)
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

failed=0
"$bin/pytest" -n "${GRAPHCRED_TEST_WORKERS:-3}" --dist worksteal
rc=$?
echo "== the whole suite: exit code $rc after $((SECONDS - start)) s" >&2
[ $rc -eq 5 ] && no_tests "the whole suite"
[ $rc -ne 0 ] && failed=1

echo "make test: waiting for the compat and node phases (builds: $build_log)" >&2
wait $side
if [ "$(cat "$logs/build.rc" 2>/dev/null)" != 0 ]; then
  cat "$build_log" >&2
  echo "make test: building the compat kube-apiserver, the node or the image failed" >&2
  exit 1
fi
grep -E "^build-image: (built|size|done)|^real" "$build_log" >&2 || true

phase() {  # NAME TITLE SELECTION: show a side phase's output and judge its exit code
  echo "== $2" >&2
  cat "$logs/$1.log"
  local code
  code=$(cat "$logs/$1.rc" 2>/dev/null || echo 1)
  [ "$code" -eq 5 ] && no_tests "$3"
  [ "$code" -ne 0 ] && failed=1
}
compat_bin=$(bash testbed/build-binaries.sh compat 2>/dev/null | tail -1)
phase compat "the compat tests on $("$compat_bin/kube-apiserver" --version)" "-m compat"
phase node "the node tests (a real node; the chart with the image built from the Dockerfile)" "-m node"
exit $failed
