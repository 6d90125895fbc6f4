"""tcx (kernel 6.6+): one BPF link per hook, owned by this process's file descriptors.

A link (BPF_LINK_CREATE, attach types BPF_TCX_INGRESS/EGRESS) belongs to the fd this
process holds, so it vanishes when the process exits, even on kill -9: nothing can be left
behind to count twice. Neither bcc 0.26 nor pyroute2 0.9.7 can create one, so this module
issues the two bpf() commands it needs through kernel/bpf_syscall.py, the one wrapper of
the syscall.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping

from retinad.errors import AttachError
from retinad.kernel.attachment import Attachment, Hook, Mode, Program, failure_reason
from retinad.kernel.bpf_syscall import bpf

BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_F_BEFORE = 1 << 3
"""BPF_LINK_CREATE flag: with no relative fd/id, put the program at the head of the hook."""


class _LinkCreateAttr(ctypes.Structure):
    """union bpf_attr, BPF_LINK_CREATE member with its tcx part (include/uapi/linux/bpf.h)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("relative_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("expected_revision", ctypes.c_uint64),
        ("_rest", ctypes.c_uint8 * 48),
    ]


class _ProgQueryAttr(ctypes.Structure):
    """union bpf_attr, BPF_PROG_QUERY member."""

    _fields_ = [
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("prog_attach_flags", ctypes.c_uint64),
        ("link_ids", ctypes.c_uint64),
        ("link_attach_flags", ctypes.c_uint64),
        ("revision", ctypes.c_uint64),
    ]


def tcx_link_create(prog_fd: int, ifindex: int, attach_type: int, flags: int = BPF_F_BEFORE) -> int:
    """Create a tcx link; returns its fd.

    By default first on the hook (BPF_F_BEFORE, relative to nothing): in tcx a program that
    returns anything but TCX_NEXT ends the chain, so a program appended after a neighbour
    that returns a verdict (Cilium does) would never run. Ours always returns TCX_NEXT,
    so every program after it still sees every packet.
    """
    attr = _LinkCreateAttr(
        prog_fd=prog_fd, target_ifindex=ifindex, attach_type=attach_type, flags=flags
    )
    return bpf(BPF_LINK_CREATE, attr)


def tcx_prog_ids(ifindex: int, attach_type: int) -> list[int]:
    """IDs of the programs attached through tcx to one hook (for probes and tests)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _ProgQueryAttr(
        target_ifindex=ifindex, attach_type=attach_type, prog_ids=ctypes.addressof(ids), count=64
    )
    bpf(BPF_PROG_QUERY, attr)
    return list(ids[: attr.count])


def tcx_supported() -> bool:
    """Whether this kernel has tcx (6.6+): a read-only program query on loopback."""
    try:
        tcx_prog_ids(1, BPF_TCX_INGRESS)
    except OSError:
        return False
    return True


class TcxAttacher:
    """tcx links, owned by this process's file descriptors."""

    mode: Mode = "tcx"

    def attach(self, ifindex: int, ifname: str, progs: Mapping[Hook, Program]) -> Attachment:
        att = Attachment(ifindex=ifindex, ifname=ifname, mode="tcx")
        for hook, prog in progs.items():
            kind = BPF_TCX_INGRESS if hook is Hook.INGRESS else BPF_TCX_EGRESS
            try:
                att.link_fds.append(tcx_link_create(prog.fd, ifindex, kind))
            except OSError as err:
                self.detach(att)
                raise AttachError(
                    f"{ifname} (ifindex {ifindex}): tcx {hook.value} link for {prog.name} "
                    f"failed: {err.strerror}",
                    reason=failure_reason(err.errno),
                ) from err
            att.hooks.append(hook)
        return att

    def detach(self, att: Attachment) -> None:
        while att.link_fds:
            os.close(att.link_fds.pop())
        att.hooks.clear()
