#!/usr/bin/env bash
# What `make test-package` needs beyond `make setup-dev`, on a clean Debian 12 host as root:
# debootstrap (the systemd image), systemd-container (systemd-nspawn for the least-privilege
# unit), rpm (rpm -qp and --root installs), lintian, busybox-static (/bin/sh in the rpm
# scratch root), prometheus and bpftool (setup-dev has them; listed so this stands alone).
# The cached systemd images are built by the tests' session fixture (after it has made sure a
# dockerd runs): scripts/build-systemd-image.sh. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1
pkgs=(debootstrap systemd-container rpm lintian busybox-static prometheus bpftool docker.io)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-package-tests: installing ${missing[*]}" >&2
  apt-get update -q >/dev/null
  apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
