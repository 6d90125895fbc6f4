#!/usr/bin/env bash
# Build retinad's container image from ./Dockerfile.
#
# Why this script and not a bare `docker build`: the test machines reach no image registry,
# so `FROM debian:bookworm-slim` cannot be pulled. Here the base is a bookworm rootfs made
# with debootstrap from the machine's Debian mirror (python3-bpfcc already in it) and
# `docker import`ed; the Dockerfile's RUN then finds bcc installed and needs no network.
# With a registry, set RETINAD_IMAGE_BASE=debian:bookworm-slim and the same Dockerfile
# installs bcc with apt.
#
# The build context is ./lib (this checkout's wheel and its dependencies, installed with
# pip --target: the host's Python is bookworm's 3.11, so its wheels fit the image) plus bpf/.
#
# Cache (per machine, under $RETINAD_CACHE/image): the base rootfs tarball, keyed by a hash
# of its inputs (suite, package list, mirror, this script's base recipe); a new key builds
# a new rootfs (about 60 s on 2 cores) and drops the old tarballs. The base image tag
# carries the same key, so `docker image inspect` tells whether it is already imported.
#
# Usage (as root): scripts/build-image.sh      prints the image tag on stdout
# Env:
#   RETINAD_IMAGE        tag to build (default retinad-test/retinad:dev)
#   RETINAD_IMAGE_BASE   base image; "" (default) = the debootstrap'd base built here
#   RETINAD_CACHE        cache root (default /var/cache/retinad-test)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${RETINAD_CACHE:-/var/cache/retinad-test}
IMAGE=${RETINAD_IMAGE:-retinad-test/retinad:dev}
BASE=${RETINAD_IMAGE_BASE:-}
PY=${RETINAD_PYTHON:-$here/.venv/bin/python}
[ -x "$PY" ] || PY=/usr/bin/python3
SUITE=bookworm
BASE_PACKAGES=python3,python3-bpfcc,iproute2,ca-certificates
BASE_RECIPE_VERSION=1   # bump when the rootfs steps below change

step() { printf '[build-image] %s\n' "$*" >&2; }
die() { printf '[build-image] ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, docker)"
command -v docker >/dev/null || die "docker is not installed (scripts/setup.sh --dev installs docker.io)"

mirror() {
	local m=""
	if [ -f /etc/apt/sources.list.d/debian.sources ]; then
		m=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources)
	fi
	if [ -z "$m" ] && [ -f /etc/apt/sources.list ]; then
		m=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list)
	fi
	echo "${m:-http://deb.debian.org/debian}"
}

build_base() {
	local mirror key tag dir tarball rootfs
	mirror=$(mirror)
	key=$(printf '%s\n' "$SUITE" "$BASE_PACKAGES" "$mirror" "$BASE_RECIPE_VERSION" | sha256sum | cut -c1-12)
	tag="retinad-test/bookworm-bcc:$key"
	if docker image inspect "$tag" >/dev/null 2>&1; then
		echo "$tag"; return
	fi
	dir=$CACHE/image
	mkdir -p "$dir"
	tarball=$dir/bookworm-bcc-$key.tar
	exec 9>"$dir/lock"
	flock 9   # one build per machine at a time; the others reuse its tarball
	if [ ! -s "$tarball" ]; then
		if ! command -v debootstrap >/dev/null; then
			step "installing debootstrap"
			NEEDRESTART_SUSPEND=1 DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
				install -y -q --no-install-recommends debootstrap >&2 ||
				{ apt-get -o DPkg::Lock::Timeout=600 update -q >&2 &&
				  NEEDRESTART_SUSPEND=1 DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
					install -y -q --no-install-recommends debootstrap >&2; }
		fi
		rootfs=$dir/rootfs-$key.tmp
		rm -rf "$rootfs"
		step "debootstrap $SUITE ($BASE_PACKAGES) from $mirror"
		debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$mirror" >&2 ||
			die "debootstrap failed (log: $rootfs/debootstrap/debootstrap.log)"
		printf 'deb %s %s main\n' "$mirror" "$SUITE" > "$rootfs/etc/apt/sources.list"
		rm -f "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin
		rm -rf "$rootfs"/var/lib/apt/lists/* && mkdir -p "$rootfs/var/lib/apt/lists/partial"
		: > "$rootfs/etc/machine-id"
		tar -C "$rootfs" -cf "$tarball.tmp" .
		mv "$tarball.tmp" "$tarball"
		rm -rf "$rootfs"
		find "$dir" -maxdepth 1 -name 'bookworm-bcc-*.tar' ! -name "bookworm-bcc-$key.tar" -delete
	fi
	if ! docker image inspect "$tag" >/dev/null 2>&1; then
		step "docker import $tarball as $tag"
		docker import -c 'ENV LANG=C.UTF-8' "$tarball" "$tag" >/dev/null
	fi
	flock -u 9
	echo "$tag"
}

if [ -z "$BASE" ]; then
	BASE=$(build_base)
fi

ctx=$(mktemp -d /tmp/retinad-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
step "wheel of $here and its dependencies -> lib/"
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$ctx/dist" "$here" >&2
"$PY" -m pip install -q --disable-pip-version-check --no-compile --target "$ctx/lib" "$ctx"/dist/retinad-*.whl >&2
rm -rf "$ctx/lib/bin"
cp -r "$here/bpf" "$ctx/bpf"
cp "$here/Dockerfile" "$ctx/Dockerfile"
step "docker build $IMAGE (FROM $BASE)"
docker build -q --build-arg BASE="$BASE" --label org.retinad.built-by=scripts/build-image.sh -t "$IMAGE" "$ctx" >&2
echo "$IMAGE"
