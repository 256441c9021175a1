#!/usr/bin/env bash
# Builds Ferry's container image from a release binary, with no base image to download:
# FROM scratch, holding the binary, exactly the shared libraries it links (as ldd lists
# them, from this machine), /etc/passwd and /etc/group naming the unprivileged user ferry
# (uid and gid 10001), and /var/lib/ferry owned by it. See deploy/image/README.md.
#
#   deploy/image/build.sh [BINARY] [TAG]     # defaults: target/release/ferry, ferry:latest
set -euo pipefail

binary=${1:-target/release/ferry}
tag=${2:-ferry:latest}
uid=10001

if [ ! -x "$binary" ]; then
  echo "build.sh: $binary is not an executable; build it first (cargo build --release)" >&2
  exit 1
fi
if ! docker info >/dev/null 2>&1; then
  echo "build.sh: no Docker engine answers (docker info failed)" >&2
  exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
context=$(mktemp -d "${TMPDIR:-/tmp}/ferry-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
root=$context/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc/ferry" "$root/var/lib" "$root/tmp" "$context/data"

# The binary without its debug sections (a tenth of the size); the original is untouched.
if command -v objcopy >/dev/null; then
  objcopy --strip-debug "$binary" "$root/usr/local/bin/ferry"
else
  cp "$binary" "$root/usr/local/bin/ferry"
fi
chmod 755 "$root/usr/local/bin/ferry"

# Every library the dynamic linker will ask for, at the path it will look in, and the
# linker itself. A statically linked binary (musl) needs none: ldd then says so.
if ldd "$binary" >/dev/null 2>&1; then
  ldd "$binary" | awk '/=> \// { print $3 } /^[ \t]*\// { print $1 }' | while read -r lib; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
fi

cat > "$root/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
ferry:x:$uid:$uid:Ferry:/var/lib/ferry:/sbin/nologin
EOF
cat > "$root/etc/group" <<EOF
root:x:0:
ferry:x:$uid:
EOF
# Names resolve from /etc/hosts (written by the engine) then DNS (glibc has both built in).
echo "hosts: files dns" > "$root/etc/nsswitch.conf"
chmod 1777 "$root/tmp"

cp "$here/Dockerfile" "$context/Dockerfile"
version=$("$binary" --version | awk '{ print $2 }')
revision=$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)
# The engine's classic builder needs no buildx plugin; its deprecation notice is noise here.
if ! out=$(docker build --quiet \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --tag "$tag" "$context" 2>&1); then
  echo "$out" >&2
  exit 1
fi
echo "built $tag (ferry $version, revision $revision)"
