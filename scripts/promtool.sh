#!/usr/bin/env bash
# Runs promtool (Prometheus' rule checker and unit tester), built once from the Go module proxy into the same cache
# as the test bed's binaries (keyed by version, so only the first run pays). The alert-rule tests use it to prove
# that the chart's PrometheusRule fires on metrics scraped from the operator. Built with the remove_all_sd tag
# (see plugins/plugin_*.go in Prometheus' module): rule tests need no service discovery, and without the tag the
# build compiles every cloud SDK (AWS, Azure, GCE, ...): over 11 minutes on 2 busy cores, not finished.
# Usage: scripts/promtool.sh [promtool args...]; scripts/promtool.sh --path prints the binary's path (building it).
set -euo pipefail
PROMETHEUS_VERSION=v0.316.0
cache=${GRAPHCRED_CACHE:-$HOME/.cache/graphcred}
bin="$cache/bin/promtool-$PROMETHEUS_VERSION"

if [ ! -x "$bin/promtool" ]; then
  command -v go >/dev/null || { echo "promtool.sh: Go is required to build promtool" >&2; exit 1; }
  echo "promtool.sh: building promtool $PROMETHEUS_VERSION (once; cached in $bin)" >&2
  t0=$SECONDS
  # Built into a scratch directory and moved into place whole, so a concurrent or interrupted run never sees half
  # a binary.
  mkdir -p "$cache/bin"
  tmp=$(mktemp -d "$cache/bin/.promtool.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" \
    go install -tags remove_all_sd -ldflags='-s -w' "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION"
  mv -T "$tmp" "$bin" 2>/dev/null || [ -x "$bin/promtool" ]  # another run may have won the race: fine
  rm -rf "$tmp"
  trap - EXIT
  echo "promtool.sh: built promtool in $((SECONDS - t0)) s" >&2
fi

if [ "${1:-}" = "--path" ]; then
  echo "$bin/promtool"
  exit 0
fi
exec "$bin/promtool" "$@"
