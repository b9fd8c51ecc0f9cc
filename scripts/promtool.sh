#!/usr/bin/env bash
# Runs promtool (Prometheus' rule checker and unit tester), built once from the Go module proxy into the same cache
# as the test bed's binaries (keyed by version, so only the first run pays). The alert-rule tests use it to prove
# that the chart's PrometheusRule fires on metrics scraped from the operator. Built with the remove_all_sd tag
# (see plugins/plugin_*.go in Prometheus' module): rule tests need no service discovery, and without the tag the
# build compiles every cloud SDK (AWS, Azure, GCE, ...): over 11 minutes on 2 busy cores, not finished.
# Usage: scripts/promtool.sh [promtool args...]; scripts/promtool.sh --path prints the binary's path (building it).
set -euo pipefail
PROMETHEUS_VERSION=v0.316.0
# shellcheck source=scripts/go-install-cached.sh
. "$(dirname "$0")/go-install-cached.sh"
promtool=$(go_install_cached promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool \
  -tags remove_all_sd)

if [ "${1:-}" = "--path" ]; then
  echo "$promtool"
  exit 0
fi
exec "$promtool" "$@"
