# shellcheck shell=bash
# Sourced by the scripts that run a Go tool built from the Go module proxy (actionlint.sh, promtool.sh).
# go_install_cached NAME VERSION PACKAGE [go install flags...]: builds PACKAGE@VERSION once into
# $GRAPHCRED_CACHE/bin/NAME-VERSION (default ~/.cache/graphcred, the test bed's cache; keyed by version, so only the
# first run pays) and prints the binary's path. Built into a scratch directory and moved into place whole, so a
# concurrent or interrupted run never sees half a binary.
go_install_cached() {
  local name=$1 version=$2 package=$3
  shift 3
  local cache=${GRAPHCRED_CACHE:-$HOME/.cache/graphcred}
  local bin="$cache/bin/$name-$version"
  if [ ! -x "$bin/$name" ]; then
    command -v go >/dev/null || { echo "$name: Go is required to build it" >&2; return 1; }
    echo "$name: building $name $version (once; cached in $bin)" >&2
    local t0=$SECONDS tmp
    mkdir -p "$cache/bin"
    tmp=$(mktemp -d "$cache/bin/.$name.XXXXXX")
    if ! GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath" \
        go install -ldflags='-s -w' "$@" "$package@$version"; then
      rm -rf "$tmp"
      return 1
    fi
    mv -T "$tmp" "$bin" 2>/dev/null || [ -x "$bin/$name" ]  # another run may have won the race: fine
    rm -rf "$tmp"
    echo "$name: built $name in $((SECONDS - t0)) s" >&2
  fi
  echo "$bin/$name"
}
