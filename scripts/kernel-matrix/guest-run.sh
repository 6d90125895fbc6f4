#!/bin/sh
# Runs inside a kernel-matrix guest, started by the image's /retinad-guest-init with the
# checkout mounted read-only at /mnt/repo and this guest's result directory at /mnt/out.
# Lives in the checkout (not the image) so changing what runs never rebuilds the image.
#
# Writes to /mnt/out: pytest.log (the run), junit.xml, probes.txt (`retinad check` in this
# kernel) and, last, rc (pytest's exit status). The host reads rc; no rc means the guest
# died before the end (run.sh reports the console log then).
out=/mnt/out
kver=$(uname -r)
export PYTHONPATH=/mnt/repo:/opt/retinad-py PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export RETINAD_BPF_DIR=/mnt/repo/bpf
# bcc under TCG: one compile of dropreason_hooks.c took over 120 s on a loaded host
export RETINAD_COMPILE_TIMEOUT_SECONDS=1500
export HOME=/root PATH=/opt/retinad-py/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
cd /mnt/repo || exit 1
echo "RETINAD-KMATRIX: kernel $kver, bcc $(python3 -c 'import bcc; print(bcc.__version__)' 2>&1)"
python3 -m retinad check >"$out/probes.txt" 2>&1
echo "RETINAD-KMATRIX: retinad check exit $?"
cat "$out/probes.txt"
# tests: one pytest argument per line, written by run.sh
set --
while IFS= read -r t; do [ -n "$t" ] && set -- "$@" "$t"; done <"$out/tests"
echo "RETINAD-KMATRIX: pytest $*"
python3 -m pytest -p no:cacheprovider -q -rs --durations=15 --junitxml="$out/junit.xml" "$@" \
	>"$out/pytest.log" 2>&1
rc=$?
tail -n 60 "$out/pytest.log"
echo "$rc" >"$out/rc"
echo "RETINAD-KMATRIX: pytest exit $rc"
sync
