"""kernel/kprobe.py: kprobes and kretprobes attached from this process via the kprobe PMU.

A small real program, compiled in the compile child (kernel/loader.py), counts this test
process's own getpid() calls, so the count is exact whatever else runs on the machine.
Where the kernel has no kprobe PMU (this project's CI host: CONFIG_KPROBES off) the
attaching tests skip with that reason; they run in the kernel matrix's 5.10 and 6.1 guests.
"""

from __future__ import annotations

import errno
import os
import platform
import secrets
from pathlib import Path

import pytest

from retinad.kernel import kprobe, loader
from retinad.kernel.maps import MapHandle
from tests.kernel.test_loader import u64_at

COUNT_C = """
BPF_ARRAY(calls, u64, 1);

int NAME(struct pt_regs *ctx) {
    if ((bpf_get_current_pid_tgid() >> 32) != TARGET_TGID)
        return 0;
    int k = 0;
    u64 *v = calls.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
"""

needs_kprobes = pytest.mark.skipif(
    not kprobe.available(), reason="no kprobe PMU on this kernel (CONFIG_KPROBES off)"
)


def getpid_function() -> str:
    """The getpid syscall's kernel function on this architecture (from kallsyms)."""
    names = {"x86_64": "__x64_sys_getpid", "aarch64": "__arm64_sys_getpid"}
    name = names.get(platform.machine())
    if name is None:
        pytest.skip(f"no getpid symbol known for {platform.machine()}")
    with open("/proc/kallsyms") as f:
        if not any(line.split()[2] == name for line in f if len(line.split()) >= 3):
            pytest.skip(f"{name} not in /proc/kallsyms")
    return name


def call_getpid(n: int) -> None:
    for _ in range(n):
        os.getpid()  # glibc does not cache getpid (since 2.25): one syscall each


def compiled(tmp_path: Path) -> tuple[loader.LoadedObject, str]:
    name = f"lkp_{secrets.token_hex(4)}"
    (tmp_path / "count.c").write_text(COUNT_C.replace("NAME", name))
    obj = loader.load(tmp_path, "count.c", {"TARGET_TGID": os.getpid()}, {name: loader.PROG_KPROBE})
    return obj, name


def test_attach_without_the_pmu_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(OSError) as err:
        kprobe.attach(-1, "whatever", pmu_dir=tmp_path / "kprobe")
    assert err.value.errno == errno.ENOENT
    assert "no kprobe PMU (CONFIG_KPROBES)" in str(err.value)


@needs_kprobes
@pytest.mark.parametrize("retprobe", [False, True], ids=["kprobe", "kretprobe"])
def test_a_probe_counts_every_call_and_stops_on_detach(tmp_path: Path, retprobe: bool) -> None:
    function = getpid_function()
    obj, name = compiled(tmp_path)
    try:
        call_getpid(7)
        assert u64_at(obj["calls"]) == 0  # nothing attached yet: not the child, not bcc
        if retprobe:
            obj.attach_kretprobe(event=function, fn_name=name)
        else:
            obj.attach_kprobe(event=function, fn_name=name)
        call_getpid(25)
        assert u64_at(obj["calls"]) == 25
        if retprobe:
            obj.detach_kretprobe(function)
        else:
            obj.detach_kprobe(function)
        call_getpid(10)
        assert u64_at(obj["calls"]) == 25
    finally:
        obj.cleanup()


@needs_kprobes
def test_an_absent_function_is_enoent_and_leaves_nothing(tmp_path: Path) -> None:
    obj, name = compiled(tmp_path)
    try:
        with pytest.raises(OSError) as err:
            obj.attach_kprobe(event="retinad_no_such_function", fn_name=name)
        assert err.value.errno in (errno.ENOENT, errno.EINVAL), err.value
        assert "kprobe retinad_no_such_function" in str(err.value)
        obj.cleanup()  # nothing half-attached to undo
    finally:
        obj.cleanup()


@needs_kprobes
def test_cleanup_removes_the_probes(tmp_path: Path) -> None:
    function = getpid_function()
    obj, name = compiled(tmp_path)
    calls = MapHandle(os.dup(obj["calls"].fd), "calls")  # readable after cleanup
    try:
        obj.attach_kprobe(event=function, fn_name=name)
        call_getpid(3)
        assert u64_at(calls) == 3
        obj.cleanup()
        call_getpid(5)
        assert u64_at(calls) == 3
    finally:
        obj.cleanup()
        calls.close()
