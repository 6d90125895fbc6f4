"""kernel/loader.py: bcc compiles in a child; this process gets working fds and no bcc.

Each test compiles a small real program with bcc in the child, then uses it here: a tc
program run with BPF_PROG_TEST_RUN counting into a map, a tracepoint program attached
from this process with perf_event_open. Failures (compile error, verifier rejection)
must carry bcc's message and leave no program behind.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import socket
from pathlib import Path

import pytest

from retinad.errors import CompileError
from retinad.kernel import bpf_syscall, loader, tracepoint
from tests.daemon_proc import wait_for

COUNTER_C = """
BPF_ARRAY(hits, u64, 1);
BPF_PERCPU_HASH(seen, u32, u64, 8);

int NAME(struct __sk_buff *skb) {
    int k = 0;
    u64 *v = hits.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, ADD);
    return -1;  /* TC_ACT_UNSPEC */
}
"""

TRACEPOINT_C = """
BPF_ARRAY(drops, u64, 1);

int NAME(void *ctx) {
    int k = 0;
    u64 *v = drops.lookup(&k);
    if (v)
        __sync_fetch_and_add(v, 1);
    return 0;
}
"""

FRAME = bytes(14) + bytes(50)  # an Ethernet header and some payload, for BPF_PROG_TEST_RUN


def unique(prefix: str) -> str:
    """A program name no other session uses (the kernel keeps 15 characters)."""
    return f"{prefix}{secrets.token_hex(4)}"


def programs_named(name: str) -> list[int]:
    out = []
    for pid in bpf_syscall.prog_ids():
        try:
            fd = bpf_syscall.prog_fd_by_id(pid)
        except OSError:
            continue  # freed meanwhile
        try:
            if bpf_syscall.prog_info(fd).name == name[:15]:
                out.append(pid)
        finally:
            os.close(fd)
    return out


def u64_at(m: loader.MapHandle, key: int = 0) -> int:
    value = ctypes.c_uint64()
    assert bpf_syscall.lookup(m.fd, ctypes.c_uint32(key), value)
    return value.value


def test_programs_and_maps_work_here_after_the_child_is_gone(tmp_path: Path) -> None:
    name = unique("lt_")
    (tmp_path / "counter.c").write_text(COUNTER_C.replace("NAME", name))
    obj = loader.load(tmp_path, "counter.c", {"ADD": 3}, {name: loader.PROG_SCHED_CLS})
    try:
        assert obj.child_status == 0
        with pytest.raises(ProcessLookupError):  # reaped: the child no longer exists
            os.kill(obj.child_pid, 0)
        assert sorted(obj.maps) == ["hits", "seen"]
        assert obj["seen"].percpu and not obj[b"hits"].percpu
        assert obj["seen"].max_entries == 8
        prog = obj.load_func(name.encode(), obj.SCHED_CLS)
        assert bpf_syscall.test_run(prog.fd, FRAME, repeat=5) == 2**32 - 1  # -1 as u32
        assert u64_at(obj["hits"]) == 15  # 5 runs, the -D ADD=3 define compiled in
        assert programs_named(name) == [bpf_syscall.prog_info(prog.fd).id]
    finally:
        obj.cleanup()
    wait_for(lambda: not programs_named(name), what="program freed after cleanup")


def test_a_compile_error_carries_bccs_message_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "broken.c").write_text("int f(struct __sk_buff *skb) { return undeclared; }\n")
    with pytest.raises(CompileError) as exc:
        loader.load(tmp_path, "broken.c", {}, {"f": loader.PROG_SCHED_CLS})
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'broken.c'}: bcc could not compile or load it: ")
    assert "Failed to compile BPF module" in msg


def test_a_verifier_rejection_names_the_program_and_leaves_nothing(tmp_path: Path) -> None:
    name = unique("lv_")
    src = f"int {name}(struct __sk_buff *skb) {{ u64 *p = (u64 *)(long)skb->data; return *p; }}\n"
    (tmp_path / "reject.c").write_text(src)
    with pytest.raises(CompileError) as exc:
        loader.load(tmp_path, "reject.c", {}, {name: loader.PROG_SCHED_CLS})
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'reject.c'}: loading program {name}: Failed to load BPF")
    assert programs_named(name) == []


def test_an_unknown_program_name_is_reported(tmp_path: Path) -> None:
    name = unique("lu_")
    (tmp_path / "counter.c").write_text(COUNTER_C.replace("NAME", name))
    with pytest.raises(CompileError, match="loading program nosuchfn: "):
        loader.load(tmp_path, "counter.c", {"ADD": 1}, {"nosuchfn": loader.PROG_SCHED_CLS})


def drop_udp(n: int) -> None:
    """n UDP datagrams to a closed loopback port: each one is a kfree_skb (NO_SOCKET)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(n):
            s.sendto(b"x", ("127.0.0.1", port))


@pytest.mark.skipif(
    not tracepoint.tracepoint_exists("skb", "kfree_skb"), reason="no skb:kfree_skb under tracefs"
)
def test_the_tracepoint_is_attached_from_this_process_and_detached_on_close(
    tmp_path: Path,
) -> None:
    name = unique("ltp_")
    (tmp_path / "tp.c").write_text(TRACEPOINT_C.replace("NAME", name))
    obj = loader.load(tmp_path, "tp.c", {}, {name: loader.PROG_TRACEPOINT})
    try:
        drop_udp(5)
        assert u64_at(obj["drops"]) == 0  # nothing attached it yet: not the child, not bcc
        obj.attach_tracepoint(tp=b"skb:kfree_skb", fn_name=name.encode())
        drop_udp(20)
        wait_for(lambda: u64_at(obj["drops"]) >= 20, what="20 drops counted")
        obj.detach_tracepoint(b"skb:kfree_skb")
        after = u64_at(obj["drops"])
        drop_udp(20)
        assert u64_at(obj["drops"]) == after
    finally:
        obj.cleanup()


@pytest.mark.parametrize("raw", ["soon", "0", "-5"])
def test_a_bad_compile_timeout_variable_is_named_and_starts_no_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv(loader.TIMEOUT_ENV, raw)
    (tmp_path / "counter.c").write_text(COUNTER_C.replace("NAME", unique("lt_")))
    with pytest.raises(CompileError) as err:
        loader.load(tmp_path, "counter.c", {"ADD": 1}, {})
    assert str(err.value) == (
        f"RETINAD_COMPILE_TIMEOUT_SECONDS={raw!r}: expected a number of seconds above 0"
    )
