#!/usr/bin/env bash
# Lints the GitHub Actions workflows with actionlint, built once from the Go module proxy into the same cache as the
# test bed's binaries (keyed by version, so only the first run pays: about 45 s on 2 cores). actionlint also runs
# the shellcheck linter on every `run:` script when it is on PATH, and skips that check when it is not.
# Usage: scripts/actionlint.sh [actionlint args...]   (default: every workflow under .github/workflows)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ACTIONLINT_VERSION=v1.7.12
cache=${GRAPHCRED_CACHE:-$HOME/.cache/graphcred}
bin="$cache/bin/actionlint-$ACTIONLINT_VERSION"

if [ ! -x "$bin/actionlint" ]; then
  command -v go >/dev/null || { echo "actionlint.sh: Go is required to build actionlint" >&2; exit 1; }
  echo "actionlint.sh: building actionlint $ACTIONLINT_VERSION (once; cached in $bin)" >&2
  t0=$SECONDS
  # Built into a scratch directory and moved into place whole, so a concurrent or interrupted run never sees half
  # a binary.
  mkdir -p "$cache/bin"
  tmp=$(mktemp -d "$cache/bin/.actionlint.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" \
    go install -ldflags='-s -w' "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  mv -T "$tmp" "$bin" 2>/dev/null || [ -x "$bin/actionlint" ]  # another run may have won the race: fine
  rm -rf "$tmp"
  trap - EXIT
  echo "actionlint.sh: built actionlint in $((SECONDS - t0)) s" >&2
fi

if [ $# -eq 0 ]; then
  cd "$root"
  shopt -s nullglob
  set -- .github/workflows/*.yaml .github/workflows/*.yml
  [ $# -gt 0 ] || { echo "actionlint.sh: no workflows under .github/workflows" >&2; exit 1; }
fi
exec "$bin/actionlint" "$@"
