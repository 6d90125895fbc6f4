#!/bin/sh
# PID 1 of a kernel-matrix guest (installed into the image as /retinad-guest-init).
# Kept small and stable on purpose (it is part of the image's cache key): it mounts what the
# kernel tier needs, mounts the checkout (read-only) and the result directory over 9p, runs
# the checkout's scripts/kernel-matrix/guest-run.sh, and powers off. qemu exits 0 whatever
# happened, so the host reads the verdict from the result directory, never qemu's status.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mountpoint -q /tmp || mount -t tmpfs tmpfs /tmp
mkdir -p /run && { mountpoint -q /run || mount -t tmpfs tmpfs /run; }
mount -o remount,rw / 2>/dev/null
modprobe 9pnet_virtio 2>/dev/null; modprobe 9p 2>/dev/null
ip link set lo up
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 repo /mnt/repo &&
	mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /mnt/out; then
	sh /mnt/repo/scripts/kernel-matrix/guest-run.sh
else
	echo "RETINAD-KMATRIX: cannot mount the 9p shares"
fi
sync
echo o >/proc/sysrq-trigger
sleep 30
