#!/usr/bin/env bash
# Builds avemint's container image offline: the equivalent of the Dockerfile (non-root, read-only root filesystem
# friendly, state only under /var/lib/avemint, SIGTERM, port 8080, HEALTHCHECK `avemint healthcheck`), from Debian's
# packages instead of a container registry.
#
#   1. the serve-only release binary (`cargo build --release --locked --no-default-features`), or AVEMINT_BIN;
#   2. a minimal Debian root filesystem (`debootstrap --variant=minbase`, plus ca-certificates), the source of the
#      shared libraries the binary links (found with ldd) and of the CA bundle, so the image carries Debian's builds
#      of them, the same release the binary was built against;
#   3. a distroless-style tree: the binary, those libraries and their loader, the CA bundle, passwd/group with a
#      `nonroot` user (uid 65532, as distroless), /tmp, and /var/lib/avemint owned by that user, mode 0700;
#   4. `buildah from scratch`, copy, config, commit into local container storage (podman sees it).
#
# Needs root, debootstrap, buildah, and a Debian mirror (DEBIAN_MIRROR). Run as: packaging/build-image.sh
# Environment: IMAGE (default localhost/avemint:offline), AVEMINT_BIN (skip the cargo build), DEBIAN_SUITE (bookworm),
# DEBIAN_MIRROR (http://deb.debian.org/debian), WORK (scratch directory, default target/image-build; the
# debootstrapped root filesystem is kept there between runs, delete it when done), BUILDAH_FORMAT (docker: the
# Docker image format keeps HEALTHCHECK, which the OCI format has no field for; `oci` drops it).
set -euo pipefail
cd "$(dirname "$0")/.."

image="${IMAGE:-localhost/avemint:offline}"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
work="$(realpath -m "${WORK:-target/image-build}")"
format="${BUILDAH_FORMAT:-docker}"
# buildah reads it too: `from` and `config` then keep Docker-only fields (HEALTHCHECK) without a warning.
export BUILDAH_FORMAT="$format"
uid=65532

for tool in debootstrap buildah ldd; do
  command -v "$tool" >/dev/null || {
    echo "build-image: $tool is missing (apt-get install -y debootstrap buildah)" >&2
    exit 1
  }
done

if [ -n "${AVEMINT_BIN:-}" ]; then
  bin="$AVEMINT_BIN"
else
  echo "== serve-only release build"
  cargo build --release --locked --no-default-features --bin avemint
  bin=target/release/avemint
fi
if "$bin" demo --help >/dev/null 2>&1; then
  echo "build-image: $bin has a demo command: build it with --no-default-features" >&2
  exit 1
fi

mkdir -p "$work"
rootfs="$work/rootfs"
if [ ! -x "$rootfs/usr/bin/dpkg" ] || [ ! -f "$rootfs/etc/ssl/certs/ca-certificates.crt" ]; then
  echo "== debootstrap --variant=minbase $suite ($mirror)"
  rm -rf "$rootfs"
  debootstrap --variant=minbase --include=ca-certificates "$suite" "$rootfs" "$mirror"
fi

echo "== image tree"
tree="$work/tree"
rm -rf "$tree"
state="$work/state"
rm -rf "$state"
mkdir -p "$tree/usr/local/bin" "$tree/etc/ssl/certs" "$tree/tmp" "$tree/var/lib" "$state/avemint"
install -m 0755 "$bin" "$tree/usr/local/bin/avemint"
# Every library ldd resolves (and the dynamic loader), taken from the Debian root filesystem at the same path.
libs="$(ldd "$bin" | awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }')"
for lib in $libs; do
  [ -e "$rootfs$lib" ] || {
    echo "build-image: $lib (linked by the binary) is not in the $suite root filesystem" >&2
    exit 1
  }
  mkdir -p "$tree$(dirname "$lib")"
  cp -L "$rootfs$lib" "$tree$lib"
  resolved="$(readlink -f "$rootfs$lib")"
  package="$(dpkg --root="$rootfs" -S "$lib" "${resolved#"$rootfs"}" 2>/dev/null | head -n1 | cut -d: -f1 || true)"
  echo "   $lib (Debian package ${package:-?})"
done
cp -L "$rootfs/etc/ssl/certs/ca-certificates.crt" "$tree/etc/ssl/certs/ca-certificates.crt"
cat >"$tree/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$uid:$uid:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$tree/etc/group" <<EOF
root:x:0:
nogroup:x:65534:
nonroot:x:$uid:
EOF
printf 'hosts: files dns\n' >"$tree/etc/nsswitch.conf"
chmod 1777 "$tree/tmp"
chmod 0700 "$state/avemint"

echo "== buildah from scratch → $image ($format format)"
ctr="$(buildah from scratch)"
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah copy --quiet "$ctr" "$tree" /
# The directory itself must belong to the user (a fresh volume takes its owner and mode from it): copied as an entry
# of /var/lib, since --chown applies to what is copied, not to a destination that exists.
buildah copy --quiet --chown "$uid:$uid" "$ctr" "$state" /var/lib
# `--healthcheck 'CMD a b'` is split on spaces into the exec form ["CMD", "a", "b"] (buildah does not read JSON here).
buildah config \
  --user "$uid:$uid" \
  --workingdir /var/lib/avemint \
  --env AVEMINT_LISTEN=0.0.0.0:8080 \
  --env AVEMINT_KEYS_DIR=/var/lib/avemint/keys \
  --env AVEMINT_LOG_FORMAT=json \
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --volume /var/lib/avemint \
  --port 8080 \
  --stop-signal SIGTERM \
  --healthcheck 'CMD /usr/local/bin/avemint healthcheck' \
  --healthcheck-interval 10s --healthcheck-timeout 5s --healthcheck-start-period 5s --healthcheck-retries 3 \
  --entrypoint '["/usr/local/bin/avemint"]' \
  --cmd serve \
  --label org.opencontainers.image.title=avemint \
  --label org.opencontainers.image.version="$("$bin" --version | awk '{ print $2 }')" \
  --label org.opencontainers.image.source=packaging/build-image.sh \
  "$ctr"
buildah commit --quiet --format "$format" --rm "$ctr" "$image" >/dev/null
trap - EXIT

echo "== built $image"
buildah images --format '{{.Name}}:{{.Tag}} {{.ID}} {{.Size}}' "$image"
