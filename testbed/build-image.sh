#!/usr/bin/env bash
# Builds graphcred's image from the repository's Dockerfile, unmodified, with no registry: BuildKit (buildkitd +
# buildctl, built from the Go module proxy) runs the Dockerfile with its base, `python:3.11.13-slim-bookworm`,
# replaced through a named build context by a Debian bookworm root filesystem with Debian's python3 (mmdebstrap),
# packed here as an OCI image layout. The result is an OCI image archive that `ctr -n k8s.io images import` reads.
# The image is then run once with runc, as the image says (uid 65532) and with a read-only root filesystem.
# Heavy outputs are cached in ~/.cache/graphcred, keyed by version/inputs: BuildKit's own state too, so a change
# to operator/ rebuilds only the layers after it. Prints the archive's path on its last line.
# Needs root, Go, and Debian's mmdebstrap, umoci, libseccomp-dev (runc's cgo) and pigz.
set -euo pipefail
shopt -s inherit_errexit  # and inside $(...): a failed step there must stop the build, not be cached
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
BUILDKIT_VERSION=v0.34.2  # keep in step with testbed/go/buildkit/go.mod
IMAGE_NAME=${GRAPHCRED_IMAGE_NAME:-ghcr.io/graphcred/graphcred:bed}
DEBIAN_MIRROR=${GRAPHCRED_DEBIAN_MIRROR:-http://deb.debian.org}
cache=${GRAPHCRED_CACHE:-$HOME/.cache/graphcred}
export GOFLAGS="${GOFLAGS:-} -trimpath"

log() { echo "build-image: $*" >&2; }

build_buildkit() {  # prints the directory holding buildkitd and buildctl
  local dir="$cache/bin/buildkit-$BUILDKIT_VERSION" name t0
  for name in buildkitd buildctl; do
    [ -x "$dir/$name" ] && continue
    log "building $name $BUILDKIT_VERSION — the first build takes minutes"
    t0=$SECONDS
    mkdir -p "$dir"
    # static, like BuildKit's own release binaries; the seccomp profile it gives RUN steps is plain Go
    (cd "$here/go/buildkit" && CGO_ENABLED=0 go build -ldflags="-s -w \
      -X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION" -o "$dir/$name.tmp" \
      "github.com/moby/buildkit/cmd/$name")
    mv "$dir/$name.tmp" "$dir/$name"
    log "built $name in $((SECONDS - t0)) s"
  done
  echo "$dir"
}


# The base the Dockerfile's stages expect behaves like the official python image: `python3`/`pip` in
# /usr/local/bin first on PATH, sys.prefix /usr/local, packages in /usr/local/lib/python3.11/site-packages, no
# PEP 668 marker in the way. Debian's own python3 differs (EXTERNALLY-MANAGED; its posix_local scheme turns
# `pip install --prefix=/install` into /install/local/lib/python3.11/dist-packages, which the final stage's
# `COPY /install /usr/local` would put at /usr/local/local). A virtual environment at /usr/local over Debian's
# python3 is exactly that layout: in a venv pip uses the plain posix_prefix scheme and ignores the marker.
# passwd (groupadd/useradd of the final stage) is in minbase; ca-certificates is in the official image too.
# The base trusts what this machine trusts: its local CAs (Debian's /usr/local/share/ca-certificates, e.g. an
# egress proxy's that re-signs PyPI's certificate) are added to the base's store, which Debian's pip reads, so the
# Dockerfile's `pip install` reaches PyPI as `pip` on this machine does. The image built here carries them too.
BASE_PACKAGES=python3,python3-venv,ca-certificates
LOCAL_CAS=(/usr/local/share/ca-certificates/*.crt)
[ -e "${LOCAL_CAS[0]}" ] || LOCAL_CAS=()
# shellcheck disable=SC2016  # the hooks' $1 (the new root) is mmdebstrap's to expand
base_rootfs() {  # output tar
  local ca_hooks=()
  if [ ${#LOCAL_CAS[@]} -gt 0 ]; then
    ca_hooks=(--customize-hook="cp ${LOCAL_CAS[*]} \"\$1/usr/local/share/ca-certificates/\""
              --customize-hook='chroot "$1" update-ca-certificates')
  fi
  # merged /usr by its hook, not the usrmerge package (which pulls in perl: 50 MB)
  mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" --format=tar \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --skip=output/dev \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook='chroot "$1" python3 -m venv /usr/local' \
    "${ca_hooks[@]}" \
    bookworm "$1" \
    "deb $DEBIAN_MIRROR/debian bookworm main" "deb $DEBIAN_MIRROR/debian bookworm-updates main" \
    "deb $DEBIAN_MIRROR/debian-security bookworm-security main"
}

blob() {  # layout, file: moves the file into the layout's blobs, prints "digest size"
  local digest size
  digest=sha256:$(sha256sum "$2" | cut -d' ' -f1)
  size=$(stat -c %s "$2")
  mv "$2" "$1/blobs/sha256/${digest#sha256:}"
  echo "$digest $size"
}

oci_layout() {  # rootfs tar, layout dir, tag: an OCI image layout of one layer with an official-like config
  local rootfs=$1 layout=$2 tag=$3 diff_id layer config manifest
  mkdir -p "$layout/blobs/sha256"
  diff_id=sha256:$(sha256sum "$rootfs" | cut -d' ' -f1)
  pigz -n -c "$rootfs" > "$layout/layer.tmp"
  read -r -a layer <<< "$(blob "$layout" "$layout/layer.tmp")"
  jq -n --arg diff "$diff_id" '{architecture: "amd64", os: "linux",
      config: {Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
               Cmd: ["python3"]},
      rootfs: {type: "layers", diff_ids: [$diff]},
      history: [{created_by: "testbed/build-image.sh: mmdebstrap minbase + python3, venv at /usr/local"}]}' \
    > "$layout/config.tmp"
  read -r -a config <<< "$(blob "$layout" "$layout/config.tmp")"
  jq -n --arg cd "${config[0]}" --argjson cs "${config[1]}" --arg ld "${layer[0]}" --argjson ls "${layer[1]}" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
      layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $ld, size: $ls}]}' \
    > "$layout/manifest.tmp"
  read -r -a manifest <<< "$(blob "$layout" "$layout/manifest.tmp")"
  jq -n --arg md "${manifest[0]}" --argjson ms "${manifest[1]}" --arg tag "$tag" \
    '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $md, size: $ms,
                   platform: {architecture: "amd64", os: "linux"},
                   annotations: {"org.opencontainers.image.ref.name": $tag}}]}' > "$layout/index.json"
  echo '{"imageLayoutVersion": "1.0.0"}' > "$layout/oci-layout"
}

build_base() {  # prints the OCI layout directory of the base; keyed by its recipe (a changed recipe rebuilds)
  local key dir t0
  key=$(declare -f base_rootfs oci_layout | cat - <(echo "$BASE_PACKAGES $DEBIAN_MIRROR") \
    ${LOCAL_CAS[@]+"${LOCAL_CAS[@]}"} | sha256sum | cut -c1-12)
  dir="$cache/image/base-bookworm-python3-$key"
  if [ ! -f "$dir/index.json" ]; then
    log "building the base: Debian bookworm minbase + $BASE_PACKAGES (mmdebstrap)"
    t0=$SECONDS
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    base_rootfs "$dir.tmp/rootfs.tar" > "$dir.tmp/mmdebstrap.log" 2>&1 || {
      tail -30 "$dir.tmp/mmdebstrap.log" >&2; log "mmdebstrap failed; whole log: $dir.tmp/mmdebstrap.log"; exit 1; }
    oci_layout "$dir.tmp/rootfs.tar" "$dir.tmp/layout" base
    mv "$dir.tmp/layout" "$dir.tmp.layout" && rm -rf "$dir.tmp" && mv "$dir.tmp.layout" "$dir"
    find "$cache/image" -maxdepth 1 -name 'base-bookworm-python3-*' ! -name "$(basename "$dir")" -exec rm -rf {} +
    log "built the base in $((SECONDS - t0)) s"
  fi
  echo "$dir"
}

# What the Dockerfile reads (its COPY sources and .dockerignore) and what runs it: the image's cache key.
image_key() {  # base layout
  (cd "$repo" && { cat Dockerfile .dockerignore requirements/pip.txt requirements/runtime.txt requirements/build.txt pyproject.toml \
    README.md; find operator -type f ! -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum;
    cat "$1/index.json"; echo "$BUILDKIT_VERSION $IMAGE_NAME"; } | sha256sum | cut -c1-12)
}

buildkitd_pid=
work=
stop_buildkitd() {
  if [ -n "$buildkitd_pid" ] && kill -0 "$buildkitd_pid" 2>/dev/null; then
    kill -TERM "$buildkitd_pid"
    wait "$buildkitd_pid" || true  # its exit status after SIGTERM says nothing about the build
    # the RUN steps' cgroup parent (cgroup v1: one per hierarchy) stays behind, empty; rmdir leaves a busy one
    rmdir /sys/fs/cgroup/*/buildkit 2>/dev/null || true
  fi
  buildkitd_pid=
}
cleanup() {
  stop_buildkitd
  if [ -n "$work" ]; then
    # the verification bundle's rootfs is a plain directory (umoci unpack), nothing mounted
    rm -rf "$work"
  fi
}
trap cleanup EXIT

start_buildkitd() {  # buildkit dir, runc, state dir, socket
  local bk=$1 runc=$2 state=$3 sock=$4
  mkdir -p "$state"
  # The OCI worker with runc: one daemon, no containerd to run or clean up (the node's containerd is the bed's,
  # started later). RUN steps use the host's network (what `pip install` on this machine does; no CNI here).
  "$bk/buildkitd" --root "$state" --addr "unix://$sock" \
    --oci-worker=true --oci-worker-binary "$runc" --oci-worker-snapshotter overlayfs --oci-worker-net host \
    --oci-worker-gc --containerd-worker=false \
    > "$work/buildkitd.log" 2>&1 &
  buildkitd_pid=$!
  local deadline=$((SECONDS + 60))
  until "$bk/buildctl" --addr "unix://$sock" debug workers >/dev/null 2>&1; do
    if ! kill -0 "$buildkitd_pid" 2>/dev/null || [ $SECONDS -gt $deadline ]; then
      cat "$work/buildkitd.log" >&2
      log "buildkitd did not start"
      exit 1
    fi
    sleep 0.2
  done
}

# The Dockerfile's base by name (its PYTHON_IMAGE default), as BuildKit's dockerfile frontend looks up named
# contexts: the familiar form, e.g. python:3.11.13-slim-bookworm.
base_image_name() {
  sed -n 's/^ARG PYTHON_IMAGE=//p' "$repo/Dockerfile"
}

build_image() {  # buildkit dir, base layout, output archive, log
  local bk=$1 base=$2 out=$3 buildlog=$4 base_digest
  base_digest=$(jq -r '.manifests[0].digest' "$base/index.json")
  # dockerfile.v0 is the frontend built into buildkitd: no frontend image is pulled. RUN steps get no variable of
  # this machine's environment: its PIP_CERT is the base's CA store (above); nothing else of it is needed.
  "$bk/buildctl" --addr "unix://$work/buildkitd.sock" build --progress=plain \
    --frontend dockerfile.v0 --local context="$repo" --local dockerfile="$repo" \
    --oci-layout "base=$base" --opt "context:$(base_image_name)=oci-layout://base@$base_digest" \
    --output "type=oci,name=$IMAGE_NAME,dest=$out" > "$buildlog" 2>&1 || {
      rm -f "$out"; tail -40 "$buildlog" >&2; log "the build failed; whole log: $buildlog"; exit 1; }
}

# Each step of BuildKit's plain progress log with its time: "#7 [build 4/8] RUN pip install ... DONE 61.2s".
step_summary() {  # log
  awk '/^#[0-9]+ (\[|exporting)/ && !($1 in name) { n = $0; sub(/^#[0-9]+ /, "", n); name[$1] = substr(n, 1, 100) }
       /^#[0-9]+ (DONE|CACHED)/ { status[$1] = $2 " " $3 }
       END { for (s in name) printf "  %-4s %-100s %s\n", s, name[s], status[s] }' "$1" | sort -n -k1.4
}

# Run the image as it says (umoci turns its config into a runtime spec: user, entrypoint, env), with a read-only
# root filesystem: `graphcred --help` must work, and the user must be 65532.
verify_image() {  # runc, archive
  local runc=$1 archive=$2 layout="$work/verify-layout" bundle="$work/verify-bundle" tag out
  mkdir -p "$layout"
  tar -C "$layout" -xf "$archive"
  tag=$(jq -r '.manifests[0].annotations["org.opencontainers.image.ref.name"]' "$layout/index.json")
  umoci unpack --image "$layout:$tag" "$bundle" >/dev/null
  jq '.root.readonly = true | .process.terminal = false | .process.args = .process.args[0:1] + ["--help"]' \
    "$bundle/config.json" > "$bundle/config.json.tmp" && mv "$bundle/config.json.tmp" "$bundle/config.json"
  [ "$(jq '.process.user.uid' "$bundle/config.json")" = 65532 ] || { log "the image's user is not 65532"; exit 1; }
  out=$("$runc" --root "$work/runc" run --bundle "$bundle" "graphcred-verify-$$" 2>&1) || {
    echo "$out" >&2; log "graphcred --help failed in the image"; exit 1; }
  grep -qi 'usage' <<< "$out" || { echo "$out" >&2; log "graphcred --help printed no usage"; exit 1; }
  echo "verified with runc: $(jq -c '.process.args' "$bundle/config.json") printed: $(head -1 <<< "$out")"
  jq '.process.args = ["sh", "-c", "id; touch /probe 2>&1 || true"]' "$bundle/config.json" \
    > "$bundle/config.json.tmp" && mv "$bundle/config.json.tmp" "$bundle/config.json"
  out=$("$runc" --root "$work/runc" run --bundle "$bundle" "graphcred-verify-$$" 2>&1)
  echo "verified: the image's user: $(head -1 <<< "$out"); root filesystem: $(tail -1 <<< "$out")"
  echo "size: $(du -b "$archive" | cut -f1) bytes archive (layers compressed), $(du -sb "$bundle/rootfs" | cut -f1)" \
    "bytes unpacked"
}

need_tools() {
  local missing=() tool
  for tool in go mmdebstrap umoci pigz jq gcc pkg-config; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [ ! -e /usr/include/seccomp.h ] && missing+=(libseccomp-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    log "missing: ${missing[*]} (Debian: apt-get install mmdebstrap umoci pigz jq gcc pkgconf libseccomp-dev)"
    exit 1
  fi
}

main() {
  [ "$(id -u)" = 0 ] || { log "needs root (mmdebstrap, buildkitd, runc)"; exit 1; }
  need_tools
  mkdir -p "$cache/image"
  exec 9> "$cache/image/.lock"
  flock 9  # one build at a time: BuildKit's state directory is one daemon's
  local t0=$SECONDS bk runc base key out summary state tb
  bk=$(build_buildkit)
  runc=$(bash "$here/build-binaries.sh" runc | tail -1)
  base=$(build_base)
  key=$(image_key "$base")
  out="$cache/image/graphcred-$key.tar"
  summary="$cache/image/graphcred-$key.summary"
  if [ -f "$out" ] && [ -f "$summary" ]; then
    log "cached, built and verified from the same inputs:"
  else
    work=$(mktemp -d /tmp/graphcred-image.XXXXXX)
    state="$cache/buildkit-$BUILDKIT_VERSION"
    log "building $IMAGE_NAME from the Dockerfile (buildkitd $BUILDKIT_VERSION, state in $state)"
    tb=$SECONDS
    rm -f "$out.tmp" "$summary.tmp"
    start_buildkitd "$bk" "$runc" "$state" "$work/buildkitd.sock"
    build_image "$bk" "$base" "$out.tmp" "$cache/image/graphcred-$key.log"
    stop_buildkitd
    { echo "built $IMAGE_NAME in $((SECONDS - tb)) s, steps:"
      step_summary "$cache/image/graphcred-$key.log"
      verify_image "$runc" "$out.tmp"; } > "$summary.tmp"
    mv "$out.tmp" "$out" && mv "$summary.tmp" "$summary"
    # the three newest images in the cache (several checkouts may share it, each importing its own); BuildKit's
    # state keeps the layers a rebuild reuses
    find "$cache/image" -maxdepth 1 -name 'graphcred-*.tar' -printf '%T@ %p\n' | sort -rn | tail -n +4 \
      | cut -d' ' -f2- | sed 's/\.tar$//' | while read -r old; do
      rm -f "$old.tar" "$old.summary" "$old.log"
    done
  fi
  sed 's/^/build-image: /' "$summary" >&2
  log "done in $((SECONDS - t0)) s; whole build log: $cache/image/graphcred-$key.log"
  echo "$out"
}

main "$@"
