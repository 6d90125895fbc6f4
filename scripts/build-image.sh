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
# The build context is the deb that `make package` builds (packaging/build.sh) and the
# Dockerfile, nothing else: the image installs that deb, so the image, the deb and the rpm
# ship the same files (/usr/lib/retinad, /usr/share/retinad/bpf, /usr/bin/retinad, ...).
# The base carries the deb's dependencies (python3-bpfcc, python3-grpcio, python3-bcrypt,
# python3-yaml), so installing it there needs no network.
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
#   RETINAD_IMAGE_DEB    a retinad_*_all.deb already built; "" (default) = build one now
#                        with packaging/build.sh (what `make package` runs)
#   RETINAD_CACHE        cache root (default /var/cache/retinad-test)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${RETINAD_CACHE:-/var/cache/retinad-test}
IMAGE=${RETINAD_IMAGE:-retinad-test/retinad:dev}
BASE=${RETINAD_IMAGE_BASE:-}
DEB=${RETINAD_IMAGE_DEB:-}
SUITE=bookworm
# The deb's Depends (packaging/nfpm.yaml) plus iproute2 (tc, ip for an operator's debugging)
# and ca-certificates (the API server's CA comes from the service account, others from here).
# python3-cffi-backend: bcrypt needs it through a virtual package (python3-cffi-backend-api-*),
# which debootstrap's resolver does not follow.
BASE_PACKAGES=python3,python3-bpfcc,python3-grpcio,python3-bcrypt,python3-cffi-backend,python3-yaml,iproute2,ca-certificates
BASE_RECIPE_VERSION=2   # bump when the rootfs steps below change

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
if [ -z "$DEB" ]; then
	step "building the deb with packaging/build.sh (make package)"
	bash "$here/packaging/build.sh" "$ctx/dist" >&2 || die "packaging/build.sh failed"
	DEB=$(ls "$ctx"/dist/retinad_*_all.deb)
fi
[ -f "$DEB" ] || die "no deb at $DEB"
cp "$DEB" "$ctx/retinad.deb"
cp "$here/Dockerfile" "$ctx/Dockerfile"
step "docker build $IMAGE (FROM $BASE, installing $(basename "$DEB"))"
docker build -q --build-arg BASE="$BASE" --label org.retinad.built-by=scripts/build-image.sh \
	--label org.retinad.deb="$(basename "$DEB")" -t "$IMAGE" "$ctx" >&2
echo "$IMAGE"
