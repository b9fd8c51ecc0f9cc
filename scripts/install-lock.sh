#!/usr/bin/env bash
# Installs a hashed lock exactly, resolving nothing (what pip-sync does), whatever pip the Python bundles: pip itself
# first from its hashed pin (requirements/pip.txt), then every line of the lock with --no-deps. A pip older than
# 23.3 resolving a locked dependency's extra (`httpx[http2]`) took the newest release from the index instead of the
# pin and failed --require-hashes; with --no-deps no dependency is ever looked at, so the lock must be complete
# (`pip check` proves it here, tests/repo/test_locks.py for every lock).
# Usage: scripts/install-lock.sh PYTHON LOCK [extra pip install args...]
set -euo pipefail
python=$1 lock=$2
shift 2
here=$(cd "$(dirname "$0")/.." && pwd)
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$python" -m pip install -q --require-hashes --no-deps -r "$here/requirements/pip.txt"
"$python" -m pip install -q --require-hashes --no-deps "$@" -r "$lock"
