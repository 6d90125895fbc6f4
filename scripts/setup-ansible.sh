#!/usr/bin/env bash
# The Ansible toolchain for the role's tests, installed from PyPI only (no Galaxy here):
#   - a venv with ansible-core, ansible-lint, molecule + its docker driver, testinfra and
#     passlib (the role's password_hash('bcrypt') runs on the controller);
#   - community.docker and ansible.posix (molecule's docker driver needs both) extracted
#     from the `ansible` community wheel, 2.9 MB of its 54 MB, instead of ansible-galaxy;
#   - this checkout's collection (ansible/) linked in as retinad.retinad.
# Idempotent; prints the line to eval: ANSIBLE_COLLECTIONS_PATH=... PATH=...
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${RETINAD_ANSIBLE_VENV:-$here/.venv-ansible}
colls=$here/build/ansible-collections
ansible_wheel_version=12.3.0
log() { printf 'setup-ansible: %s\n' "$*" >&2; }

stamp=$venv/.installed-ansible
if [ ! -e "$stamp" ] || [ "$0" -nt "$stamp" ]; then
  log "creating $venv"
  [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    'ansible-core>=2.16,<2.20' 'ansible-lint>=24,<27' 'molecule>=24,<27' \
    'molecule-plugins[docker]>=23.5,<27' 'pytest-testinfra>=10,<11' 'passlib>=1.7,<2' \
    'bcrypt>=4,<5'
  touch "$stamp"
fi

if [ ! -e "$colls/.complete-$ansible_wheel_version" ]; then
  log "extracting community.docker and ansible.posix from ansible==$ansible_wheel_version"
  tmp=$(mktemp -d)
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps \
    "ansible==$ansible_wheel_version" -d "$tmp"
  rm -rf "$colls"; mkdir -p "$colls"
  "$venv/bin/python" - "$tmp"/ansible-*.whl "$colls" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
keep = ("ansible_collections/community/docker/", "ansible_collections/ansible/posix/")
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith(keep)])
PY
  rm -rf "$tmp"
  touch "$colls/.complete-$ansible_wheel_version"
fi
mkdir -p "$colls/ansible_collections/retinad"
ln -sfn "$here/ansible" "$colls/ansible_collections/retinad/retinad"
echo "ANSIBLE_COLLECTIONS_PATH=$colls PATH=$venv/bin:$PATH"
