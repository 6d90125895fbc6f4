#!/usr/bin/env bash
# Prepare this host to build, run and test retinad. Idempotent; run as root.
#
# What it does, in order, and why:
#   1. apt packages: bcc (python3-bpfcc) comes from the distribution because its Python
#      module wraps the distribution's libbcc; kernel headers for bcc's runtime compile;
#      iproute2/iptables/nftables for the tests' network namespaces and drops; prometheus
#      for promtool and a real scraper.
#   2. kernel headers: when no headers package matches the running kernel, link
#      /lib/modules/$(uname -r)/{build,source} to Debian's generic headers (bcc only needs
#      them for struct layouts it does not read from BTF).
#   3. debugfs/tracefs mounts, which bcc's tracepoint attach needs.
#   4. a venv from /usr/bin/python3 with system site packages (to see bcc), with retinad
#      installed editable plus its dev tools.
#   5. with --dev: docker.io (dockerd, containerd, ctr), busybox-static and etcd-server for
#      the resolver tests, and a kube-apiserver built from Debian's kubernetes source
#      (scripts/build-kube-apiserver.sh; cached); tmux, the pseudo-terminal `retinad top`
#      is tested in.
# Usage: scripts/setup.sh [--dev]     (--dev also installs the test and lint tools)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${RETINAD_VENV:-$here/.venv}
dev=0
[ "${1:-}" = "--dev" ] && dev=1

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (installs packages, mounts tracefs, loads eBPF)"; exit 1
fi

export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
apt_pkgs=(python3-bpfcc python3-venv python3-pip linux-headers-amd64 iproute2 iptables nftables procps
          ethtool openssl make)
[ "$dev" = 1 ] && apt_pkgs+=(prometheus bpftool docker.io busybox-static etcd-server tmux)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Kernel headers for bcc.
kver=$(uname -r)
mod=/lib/modules/$kver
if [ ! -e "$mod/build/include/generated/autoconf.h" ] || \
   { [ ! -e "$mod/build/include/linux/skbuff.h" ] && [ ! -e "$mod/source/include/linux/skbuff.h" ]; }; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$hdr" ]; then
    log "no kernel headers under /usr/src after installing linux-headers-amd64"; exit 1
  fi
  common=${hdr%-amd64}-common
  log "no headers for $kver; linking $mod/build -> $hdr and source -> $common"
  mkdir -p "$mod"
  ln -sfn "$hdr" "$mod/build"
  ln -sfn "$common" "$mod/source"
fi

# debugfs and tracefs.
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing || true

# The venv.
if [ ! -x "$venv/bin/python" ]; then
  log "creating venv $venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
fi
stamp="$venv/.installed-$dev"
if [ ! -e "$stamp" ] || [ "$here/pyproject.toml" -nt "$stamp" ]; then
  extra=""
  [ "$dev" = 1 ] && extra="[dev]"
  log "installing retinad$extra into $venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$here$extra"
  touch "$stamp"
fi
# The real kube-apiserver the Kubernetes resolver tests run against (built once per
# machine from Debian's source into /var/cache/retinad-test, ~3 min cold, instant after).
if [ "$dev" = 1 ]; then
  bash "$here/scripts/build-kube-apiserver.sh" >/dev/null
fi
log "ready: $venv"
