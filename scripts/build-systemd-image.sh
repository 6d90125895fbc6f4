#!/usr/bin/env bash
# Build (once per machine, cached) the Debian bookworm images with systemd as PID 1 that the
# package and Ansible tests boot. Idempotent; run as root; prints the cache directory.
#
#   retinad-test/debian-systemd:bookworm       debootstrap minbase + systemd, dbus, python3,
#                                              iproute2, curl, procps (what an Ansible role needs)
#   retinad-test/debian-systemd-bcc:bookworm   the above + what the retinad deb depends on
#                                              (python3-bpfcc, python3-grpcio, python3-bcrypt,
#                                              python3-yaml), so `dpkg -i` needs no network
#   $CACHE/<hash>/rootfs-bcc/                  the bcc image's tree, for systemd-nspawn
#
# Why: no image registry is reachable here, so the images come from debootstrap (~60 s) and
# `docker build` (~40 s). Both are keyed by a hash of this script (its package lists are its
# inputs): a changed script builds new images, an unchanged one returns at once. Each image
# carries the hash as the label retinad.inputs, so a stale tag is rebuilt too. A flock
# serialises concurrent callers (several test sessions share one dockerd and one cache).
#
# Usage: scripts/build-systemd-image.sh [--print-cache]
#   RETINAD_TEST_CACHE   cache root (default /var/cache/retinad-test)
set -euo pipefail

cache_root=${RETINAD_TEST_CACHE:-/var/cache/retinad-test}/systemd-image
base_tag=retinad-test/debian-systemd:bookworm
bcc_tag=retinad-test/debian-systemd-bcc:bookworm
base_pkgs=systemd,systemd-sysv,dbus,python3,iproute2,curl,ca-certificates,procps
bcc_pkgs="python3-bpfcc python3-grpcio python3-bcrypt python3-yaml"

log() { printf 'build-systemd-image: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "must run as root (debootstrap, docker)"; exit 1; }

hash=$(sha256sum "$0" | cut -c1-16)
dir=$cache_root/$hash
if [ "${1:-}" = "--print-cache" ]; then echo "$dir"; exit 0; fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9

label_of() { docker image inspect -f '{{index .Config.Labels "retinad.inputs"}}' "$1" 2>/dev/null || true; }

if [ "$(label_of "$base_tag")" = "$hash" ] && [ "$(label_of "$bcc_tag")" = "$hash" ] &&
   [ -e "$dir/rootfs-bcc/.complete" ]; then
  echo "$dir"; exit 0
fi

export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
if ! command -v debootstrap >/dev/null; then
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends debootstrap >/dev/null
fi
sources=/etc/apt/sources.list.d/debian.sources
mirror=$(awk '/^URIs:/{print $2; exit}' "$sources" 2>/dev/null || true)
secmirror=$(awk '/^URIs:/{print $2}' "$sources" 2>/dev/null | sed -n 2p || true)
mirror=${mirror:-http://deb.debian.org/debian}
secmirror=${secmirror:-http://deb.debian.org/debian-security}

rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
work=$dir.tmp
if [ "$(label_of "$base_tag")" != "$hash" ]; then
  log "debootstrap bookworm into $work/rootfs (about a minute)"
  debootstrap --variant=minbase --include="$base_pkgs" bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s bookworm-security main\n' \
    "$mirror" "$mirror" "$secmirror" >"$work/rootfs/etc/apt/sources.list"
  rm -f "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/cache/apt/*.bin
  rm -rf "$work"/rootfs/var/lib/apt/lists/*; mkdir -p "$work/rootfs/var/lib/apt/lists/partial"
  : >"$work/rootfs/etc/machine-id"
  log "importing $base_tag"
  tar -C "$work/rootfs" -c . | docker import -c 'ENV container=docker' -c 'CMD ["/sbin/init"]' \
    -c "LABEL retinad.inputs=$hash" - "$base_tag" >/dev/null
  rm -rf "$work/rootfs"
fi

log "building $bcc_tag"
mkdir -p "$work/ctx"
cat >"$work/ctx/Dockerfile" <<EOF
FROM $base_tag
# policy-rc.d only while building: no daemon starts inside docker build, and the image's
# own maintainer scripts (the retinad deb's) behave as on a real host.
RUN printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $bcc_pkgs \
 && rm -f /usr/sbin/policy-rc.d \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
 && mkdir -p /var/lib/apt/lists/partial && : > /etc/machine-id
LABEL retinad.inputs=$hash
CMD ["/sbin/init"]
EOF
docker build -q -t "$bcc_tag" "$work/ctx" >/dev/null

log "exporting $bcc_tag to $dir/rootfs-bcc (for systemd-nspawn)"
cid=$(docker create "$bcc_tag")
mkdir -p "$work/rootfs-bcc"
docker export "$cid" | tar -C "$work/rootfs-bcc" -x
docker rm "$cid" >/dev/null
# docker export leaves these as empty mount points or bind targets; nspawn wants real files.
rm -f "$work/rootfs-bcc/.dockerenv"
: >"$work/rootfs-bcc/etc/machine-id"
touch "$work/rootfs-bcc/.complete"
rm -rf "$work/ctx"
rm -rf "$dir"; mv "$work" "$dir"
# Older builds of this script are no longer used by anything.
find "$cache_root" -mindepth 1 -maxdepth 1 -type d ! -name "$hash" -exec rm -rf {} +
echo "$dir"
