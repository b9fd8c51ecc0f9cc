#!/usr/bin/env bash
# Lints the GitHub Actions workflows with actionlint, built once from the Go module proxy into the same cache as the
# test bed's binaries (keyed by version, so only the first run pays: about 45 s on 2 cores). actionlint also runs
# the shellcheck linter on every `run:` script when it is on PATH, and skips that check when it is not.
# Usage: scripts/actionlint.sh [actionlint args...]   (default: every workflow under .github/workflows)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ACTIONLINT_VERSION=v1.7.12
# shellcheck source=scripts/go-install-cached.sh
. "$root/scripts/go-install-cached.sh"
actionlint=$(go_install_cached actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint)

if [ $# -eq 0 ]; then
  cd "$root"
  shopt -s nullglob
  set -- .github/workflows/*.yaml .github/workflows/*.yml
  [ $# -gt 0 ] || { echo "actionlint.sh: no workflows under .github/workflows" >&2; exit 1; }
fi
exec "$actionlint" "$@"
