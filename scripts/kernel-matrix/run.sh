#!/usr/bin/env bash
# make test-kernels: run the kernel-tier tests inside Debian 12's 6.1 and Debian 11's 5.10
# kernels, both guests at once, and fail unless both report a passing pytest run.
#
# How (facts in research/qemu-kernels.md): build-image.sh gives a cached bookworm image with
# both kernels; each guest boots under TCG (-smp 1 each: two guests use the two cores better
# than one guest with two), with the image as a snapshot=on disk (never written, so both
# share it), the checkout over 9p read-only and its own result directory over 9p. qemu exits
# 0 whatever the tests did, so the verdict is the rc file guest-run.sh writes last.
#
# Env: RETINAD_KM_TESTS   pytest arguments, space separated (default: the set below)
#      RETINAD_KM_TIMEOUT seconds per guest before it is killed (default 2700)
#      RETINAD_KM_OUT     where results go (default: a new /tmp/retinad-kmatrix-out.*)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# In-guest subset (every program compile and BTF parse costs ~20x under TCG, so only what
# depends on the kernel): the kernel tier's parser, attach (tcx where the kernel has it, else
# clsact), veth-count, drop tracepoint and drop hook tests; and the two test_check.py tests that assert what
# this kernel's probes find (the others test missing headers, which no kernel changes); the
# kprobe attachment itself; both flow-event transports (readers, and the scripted exchange
# of the events tests in low aggregation, one compile per transport).
DEFAULT_TESTS="tests/kernel/test_abi.py tests/kernel/test_packetparser_frames.py
tests/kernel/test_packetparser_veth.py tests/kernel/test_attach_packetparser.py
tests/kernel/test_dropreason.py tests/kernel/test_dropreason_hooks.py tests/kernel/test_kprobe.py
tests/kernel/test_event_readers.py
tests/kernel/test_flow_events_kernel.py::test_low_aggregation_reports_every_packet_exactly
tests/unit/test_check.py::test_check_reports_what_the_probes_find
tests/unit/test_check.py::test_hooks_source_needs_kprobes"
TESTS=${RETINAD_KM_TESTS:-$DEFAULT_TESTS}
TIMEOUT=${RETINAD_KM_TIMEOUT:-2700}

log() { printf '[kernel-matrix] %s\n' "$*" >&2; }
start=$(date +%s)
img=$("$here/build-image.sh")
mapfile -t kernels <"$img/kernels"
out=${RETINAD_KM_OUT:-$(mktemp -d /tmp/retinad-kmatrix-out.XXXXXX)}
mkdir -p "$out"
log "image $img; results in $out"

pids=()
for k in "${kernels[@]}"; do
	d=$out/$k
	rm -rf "$d"
	mkdir -p "$d"
	tr ' ' '\n' <<<"$TESTS" | grep -v '^$' >"$d/tests"
	log "booting $k"
	timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 \
		-accel tcg,thread=multi -cpu max -m 2048 -smp 1 \
		-nographic -no-reboot -nic none \
		-kernel "$img/vmlinuz-$k" -initrd "$img/initrd.img-$k" \
		-append "console=ttyS0 root=/dev/vda rw init=/retinad-guest-init panic=-1 loglevel=4" \
		-drive "file=$img/rootfs.raw,format=raw,if=virtio,snapshot=on" \
		-virtfs "local,path=$repo,mount_tag=repo,security_model=none,readonly=on,id=repo" \
		-virtfs "local,path=$d,mount_tag=out,security_model=none,id=out" \
		</dev/null >"$d/console.log" 2>&1 &
	pids+=($!)
done

fail=0
for i in "${!kernels[@]}"; do
	k=${kernels[$i]}
	d=$out/$k
	wait "${pids[$i]}" || log "$k: qemu exited $? (124 = killed after ${TIMEOUT}s)"
	if [ ! -s "$d/rc" ]; then
		log "$k: no result (the guest did not finish); last console lines:"
		tail -n 40 "$d/console.log" >&2
		fail=1
		continue
	fi
	rc=$(cat "$d/rc")
	summary=$(grep -E '^(=+ )?[0-9]+ (passed|failed|error)|(passed|failed|skipped|error).* in [0-9.]+s' "$d/pytest.log" | tail -n 1)
	if [ "$rc" = 0 ]; then
		log "$k: PASS ($summary)"
	else
		log "$k: FAIL rc=$rc ($summary); see $d/pytest.log"
		grep -E '^(FAILED|ERROR) ' "$d/pytest.log" >&2 || true
		fail=1
	fi
	grep -E '^SKIPPED' "$d/pytest.log" | sed "s/^/[kernel-matrix] $k: /" >&2 || true
done
log "done in $(( $(date +%s) - start ))s wall"
exit "$fail"
