#!/usr/bin/env bash
# make test-ansible: lint the role and run its molecule scenarios against the real systemd
# image (scripts/build-systemd-image.sh) on this machine's dockerd, with the deb that
# `make package` built. Run as root from the checkout.
#   default      two instances (the fleet shape): converge, idempotence, check mode, verify
#   alternative  TLS + basic auth + advanced mode + static resolver; a reload keeps the PID
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
log() { printf 'test-ansible: %s\n' "$*" >&2; }

# A dockerd: the one running, or one started here and stopped at the end.
started_dockerd=""
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  dockerd --live-restore >/tmp/retinad-test-ansible-dockerd.log 2>&1 &
  started_dockerd=$!
  for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
fi
cleanup() {
  docker ps -aq --filter label=retinad-molecule=1 | xargs -r docker rm -f >/dev/null 2>&1 || true
  if [ -n "$started_dockerd" ]; then kill "$started_dockerd"; wait "$started_dockerd" || true; fi
}
trap cleanup EXIT

bash scripts/build-systemd-image.sh >/dev/null
eval "export $(bash scripts/setup-ansible.sh)"
deb=$(ls -t dist/retinad_*_all.deb 2>/dev/null | head -n 1 || true)
[ -n "$deb" ] || { log "no dist/retinad_*_all.deb: run make package first"; exit 1; }
export RETINAD_PACKAGE=$here/$deb
log "package $RETINAD_PACKAGE"

log "ansible-lint (production profile)"
(cd ansible && ansible-lint --profile production --offline roles/retinad)
log "syntax check"
(cd ansible/roles/retinad && ANSIBLE_ROLES_PATH=.. ansible-playbook --syntax-check -i localhost, molecule/default/converge.yml)

for scenario in default alternative; do
  log "molecule test -s $scenario"
  (cd ansible/roles/retinad && molecule test -s "$scenario")
done
log "passed"
