#!/usr/bin/env bash
# Build (or reuse) the kernel-matrix guest image: a bookworm root with bcc and the test
# tools, plus Debian 12's 6.1 and Debian 11's 5.10 kernels with matching headers.
#
# Why this shape (measured in research/qemu-kernels.md): this machine's KVM runs only
# PVM-aware guests, so the stock kernels boot under TCG; one bookworm userspace serves both
# kernels (bcc 0.26, Python 3.11 = what retinad supports); the 5.10 header debs are not
# usr-merged, so they are unpacked beside the root and copied in (dpkg -x onto the root
# replaces /lib -> usr/lib and breaks every binary).
#
# The image is cached per machine under $RETINAD_CACHE/kernel-matrix/<key>/ and reused while
# its inputs are unchanged: this script, the guest init, the Python dependency list in
# pyproject.toml and the kernel ABI versions the mirrors currently resolve. A changed input
# builds a new directory; older ones are removed once the new one is complete.
#
# Usage (as root): scripts/kernel-matrix/build-image.sh      prints the image directory
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
CACHE=${RETINAD_CACHE:-/var/cache/retinad-test}
BASE=$CACHE/kernel-matrix
APT_WAIT=(-o DPkg::Lock::Timeout=600)
# The guest's packages: bcc and the tools the kernel-tier tests drive.
GUEST_PKGS=python3,python3-bpfcc,iproute2,iptables,nftables,conntrack,kmod,procps,ca-certificates
# The Python packages the tests import (bcc comes from Debian above).
TEST_PY=("pytest>=8,<10" "pytest-timeout>=2.3,<3" "scapy>=2.5,<3")

step() { printf '[kernel-matrix image] %s\n' "$*" >&2; }
die() { printf '[kernel-matrix image] ERROR: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot, apt-get)"

# Host tools: qemu to boot, debootstrap to build the root.
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v debootstrap >/dev/null || need+=(debootstrap)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
	step "installing ${need[*]}"
	apt-get "${APT_WAIT[@]}" update -q >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get "${APT_WAIT[@]}" install -y -q \
		--no-install-recommends "${need[@]}" >/dev/null
fi

# Mirrors from the host's own apt configuration (deb822 or one-line), never hard-coded.
sources_file=/etc/apt/sources.list.d/debian.sources
mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' "$sources_file" 2>/dev/null || true)
secmirror=$(awk '/^URIs:/ && $2 ~ /security/ {print $2; exit}' "$sources_file" 2>/dev/null || true)
if [ -z "$mirror" ]; then
	mirror=$(awk '$1=="deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
	secmirror=$(awk '$1=="deb" && $0 ~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
	sources_file=/etc/apt/sources.list
fi
[ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
[ -n "$secmirror" ] || secmirror=${mirror%/debian}/debian-security

# Resolve the kernel ABIs the mirrors offer today (part of the cache key).
tmp=$(mktemp -d /tmp/retinad-kmatrix.XXXXXX)
cleanup_tmp() { rm -rf "$tmp"; }
trap cleanup_tmp EXIT
mkdir -p "$tmp/bullseye/lists/partial" "$tmp/bullseye/archives/partial"
cat >"$tmp/bullseye/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $secmirror bullseye-security main
EOF
bapt=(-o Dir::Etc::SourceList="$tmp/bullseye/sources.list" -o Dir::Etc::SourceParts=/dev/null
	-o Dir::State::Lists="$tmp/bullseye/lists" -o Dir::Cache::Archives="$tmp/bullseye/archives"
	-o Dir::State::Status=/dev/null -o APT::Architecture=amd64 -o APT::Sandbox::User=root)
abi_of() { # $@: apt options; resolves linux-image-amd64 to linux-image-<abi>-amd64
	apt-cache "$@" depends linux-image-amd64 2>/dev/null |
		sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*\)-amd64$/\1/p' | sort -V | tail -n1
}
apt-get "${APT_WAIT[@]}" update -q >/dev/null 2>&1 || step "host apt-get update failed; using the lists it has"
k61=$(abi_of)
apt-get "${bapt[@]}" update -q >/dev/null || die "apt-get update for bullseye failed ($mirror, $secmirror)"
k510=$(abi_of "${bapt[@]}")
[ -n "$k61" ] || die "no linux-image-amd64 in the host's (bookworm) lists"
[ -n "$k510" ] || die "no linux-image-amd64 in bullseye/bullseye-security"
pydeps=$(/usr/bin/python3 -c 'import sys,tomllib; print("\n".join(tomllib.load(open(sys.argv[1],"rb"))["project"]["dependencies"]))' "$repo/pyproject.toml")

key=$( {
	cat "$here/build-image.sh" "$here/guest-init.sh"
	echo "$GUEST_PKGS" "${TEST_PY[@]}" "$k61" "$k510"
	echo "$pydeps"
} | sha256sum | cut -c1-16)
img=$BASE/$key
if [ -e "$img/complete" ]; then
	step "reusing $img (6.1=$k61-amd64, 5.10=$k510-amd64)"
	echo "$img"
	exit 0
fi

step "building $img (6.1=$k61-amd64, 5.10=$k510-amd64); about 3 minutes"
mkdir -p "$BASE"
build=$BASE/.build-$key.$$
root=$build/root
rm -rf "$build"
mkdir -p "$root"
umount_all() {
	for m in "$root/etc/apt/sources.list.d/debian.sources" "$root/dev/pts" "$root/dev" "$root/sys" "$root/proc"; do
		mountpoint -q "$m" 2>/dev/null && umount -l "$m"
	done
	return 0
}
cleanup_build() { umount_all; rm -rf "$build"; cleanup_tmp; }
trap cleanup_build EXIT

step "debootstrap bookworm ($mirror)"
debootstrap --variant=minbase --include="$GUEST_PKGS" bookworm "$root" "$mirror" >"$build/debootstrap.log" 2>&1 ||
	{ tail -n 30 "$build/debootstrap.log" >&2; die "debootstrap failed"; }
rm -f "$root/etc/apt/sources.list" "$root/var/log/bootstrap.log"
mkdir -p "$root/etc/apt/sources.list.d"
touch "$root/etc/apt/sources.list.d/debian.sources"
mount --bind "$sources_file" "$root/etc/apt/sources.list.d/debian.sources"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --bind /dev "$root/dev"

# A small initramfs: only what the guest boots from (virtio disk, ext4); Debian's default
# (MODULES=most) copies every storage driver and takes minutes under a loaded machine.
mkdir -p "$root/etc/initramfs-tools/conf.d"
echo MODULES=list >"$root/etc/initramfs-tools/conf.d/retinad-kmatrix.conf"
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >>"$root/etc/initramfs-tools/modules"

step "installing linux-image-$k61-amd64 and its headers"
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends \
	"linux-image-$k61-amd64" "linux-headers-$k61-amd64" initramfs-tools >"$build/apt.log" 2>&1 ||
	{ tail -n 30 "$build/apt.log" >&2; die "installing the 6.1 kernel failed"; }

step "installing linux-image-$k510-amd64 and its headers (bullseye)"
(cd "$tmp/bullseye/archives" && apt-get "${bapt[@]}" download -q \
	"linux-image-$k510-amd64" "linux-headers-$k510-amd64" "linux-headers-$k510-common" >/dev/null) ||
	die "downloading the 5.10 kernel debs failed"
cp "$tmp/bullseye/archives/linux-image-$k510-amd64"_*.deb "$root/tmp/"
DEBIAN_FRONTEND=noninteractive chroot "$root" sh -c 'dpkg -i /tmp/linux-image-*.deb && rm /tmp/linux-image-*.deb' \
	>>"$build/apt.log" 2>&1 || { tail -n 30 "$build/apt.log" >&2; die "dpkg -i of the 5.10 kernel failed"; }
mkdir -p "$tmp/hdr"
for d in "$tmp/bullseye/archives"/linux-headers-*.deb; do dpkg -x "$d" "$tmp/hdr"; done
cp -a "$tmp/hdr/usr/src/." "$root/usr/src/"
mkdir -p "$root/lib/modules/$k510-amd64"
cp -a "$tmp/hdr/lib/modules/$k510-amd64/." "$root/lib/modules/$k510-amd64/"
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get clean
umount_all

step "installing the tests' Python packages into /opt/retinad-py"
mapfile -t deps <<<"$pydeps"
/usr/bin/python3 -m pip install -q --disable-pip-version-check --no-compile \
	--target "$root/opt/retinad-py" "${deps[@]}" "${TEST_PY[@]}" >"$build/pip.log" 2>&1 ||
	{ tail -n 30 "$build/pip.log" >&2; die "pip install into the image failed"; }

install -m 0755 "$here/guest-init.sh" "$root/retinad-guest-init"
# promtool for the exposition tests (a static binary; the host's comes with make setup-dev)
if command -v promtool >/dev/null; then install -m 0755 "$(command -v promtool)" "$root/usr/local/bin/promtool"; fi
mkdir -p "$root/mnt/repo" "$root/mnt/out"
rm -f "$root/etc/apt/sources.list.d/debian.sources"
echo retinad-kmatrix >"$root/etc/hostname"

step "writing the ext4 image"
mkdir -p "$build/out"
for k in "$k61-amd64" "$k510-amd64"; do
	[ -e "$root/boot/vmlinuz-$k" ] || die "no /boot/vmlinuz-$k in the root"
	[ -e "$root/boot/initrd.img-$k" ] || die "no /boot/initrd.img-$k in the root"
	# build is an absolute symlink into the root's /usr/src: check it there, not on the host
	[ -e "$root/usr/src/linux-headers-$k/include/generated/autoconf.h" ] || die "no headers for $k"
	cp "$root/boot/vmlinuz-$k" "$root/boot/initrd.img-$k" "$build/out/"
done
printf '%s\n' "$k61-amd64" "$k510-amd64" >"$build/out/kernels"
truncate -s 6G "$build/out/rootfs.raw"
mkfs.ext4 -q -F -L retinadkm -d "$root" "$build/out/rootfs.raw"
rm -rf "$img"
mv "$build/out" "$img"
touch "$img/complete"
for old in "$BASE"/*; do
	[ "$old" = "$img" ] || [ ! -e "$old/complete" ] || rm -rf "$old"
done
step "image ready: $img"
echo "$img"
