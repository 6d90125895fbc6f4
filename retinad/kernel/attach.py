"""Attach tc programs to an interface's ingress and egress, and take them off again.

Two mechanisms, chosen by ``[packetparser].attach_mode``:

tcx (kernel 6.6+, preferred)
    A BPF link per hook (BPF_LINK_CREATE, attach types BPF_TCX_INGRESS/EGRESS). The link
    belongs to the file descriptor this process holds, so it vanishes when the process
    exits, even on kill -9: nothing can be left behind to count twice. Neither bcc 0.26 nor
    pyroute2 0.9.7 can create one, so this module calls the bpf() syscall itself.

clsact (any kernel with sched_cls)
    A ``bpf`` filter with direct-action on the clsact qdisc, through pyroute2. The filters
    outlive the process, so they are marked as ours: priority ``FILTER_PRIO`` (1), handle
    ``FILTER_HANDLE`` (0x7e7ad) and a name starting ``retinad_pp_``. Priority 1 is the
    first tc runs; Cilium and Retina use it too (handle 1), and cls_bpf runs the filters of
    one priority newest first, so ours, added after theirs, sees every packet before their
    verdict ends the chain. (A filter added at prio 1 after ours runs before it: nothing in
    tc can prevent that; DESIGN.md says so.) Filters of 0.1 at prio 0x0a00 are still
    recognised as ours (``LEGACY_FILTER_PRIOS``). A later start replaces a filter
    with that mark in place (no gap, no duplicate) and ``remove_stale_filters`` removes
    them from interfaces no longer selected. The clsact qdisc is created only when absent
    and deleted on detach only if this process created it and no filter is left on it;
    foreign filters and qdiscs are never touched.

Every failure raises AttachError naming the interface, with a short ``reason`` for
``retinad_attach_errors_total{reason}``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from retinad.errors import AttachError

# --- the bpf() syscall ----------------------------------------------------------------

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}
BPF_PROG_QUERY = 16
BPF_LINK_CREATE = 28
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
BPF_F_BEFORE = 1 << 3
"""BPF_LINK_CREATE flag: with no relative fd/id, put the program at the head of the hook."""

_libc = ctypes.CDLL(None, use_errno=True)


def bpf_syscall(cmd: int, attr: ctypes.Structure) -> int:
    """bpf(cmd, &attr, sizeof attr); raises OSError with the kernel's errno."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf() syscall number unknown for {platform.machine()}")
    res = int(_libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr)))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return res


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
    return bpf_syscall(BPF_LINK_CREATE, attr)


def tcx_prog_ids(ifindex: int, attach_type: int) -> list[int]:
    """IDs of the programs attached through tcx to one hook (for probes and tests)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = _ProgQueryAttr(
        target_ifindex=ifindex, attach_type=attach_type, prog_ids=ctypes.addressof(ids), count=64
    )
    bpf_syscall(BPF_PROG_QUERY, attr)
    return list(ids[: attr.count])


def tcx_supported() -> bool:
    """Whether this kernel has tcx (6.6+): a read-only program query on loopback."""
    try:
        tcx_prog_ids(1, BPF_TCX_INGRESS)
    except OSError:
        return False
    return True


# --- attachments ------------------------------------------------------------------------


class Hook(Enum):
    """Which side of an interface a program runs on."""

    INGRESS = "ingress"
    EGRESS = "egress"


Mode = Literal["tcx", "clsact"]
CLSACT_PARENT = {Hook.INGRESS: 0xFFFFFFF2, Hook.EGRESS: 0xFFFFFFF3}
FILTER_PRIO = 1
LEGACY_FILTER_PRIOS = (0x0A00,)
"""Priorities earlier builds used: their filters are ours too (replaced or swept)."""
OUR_PRIOS = (FILTER_PRIO, *LEGACY_FILTER_PRIOS)
FILTER_HANDLE = 0x7E7AD
FILTER_NAME_PREFIX = "retinad_pp_"


@dataclass(frozen=True)
class Program:
    """A loaded program: its fd and its name (for filter names and logs)."""

    fd: int
    name: str


@dataclass
class Attachment:
    """What was attached to one interface, enough to undo it."""

    ifindex: int
    ifname: str
    mode: Mode
    link_fds: list[int] = field(default_factory=list)
    """tcx: the link fds (closing them detaches)."""
    hooks: list[Hook] = field(default_factory=list)
    """clsact: the hooks that carry our filter."""
    created_qdisc: bool = False
    """clsact: this process created the clsact qdisc, so may delete it when unused."""


def _reason(err: OSError | NetlinkError) -> str:
    code = err.errno if isinstance(err, OSError) else err.code
    return {
        errno.ENODEV: "no_such_interface",
        errno.ENXIO: "no_such_interface",
        errno.ENOENT: "no_such_interface",
        errno.EPERM: "permission",
        errno.EACCES: "permission",
        errno.EEXIST: "conflict",
        errno.EBUSY: "conflict",
        errno.EINVAL: "invalid",
        errno.EOPNOTSUPP: "unsupported",
    }.get(code or 0, "other")


class Attacher(Protocol):
    """Puts programs on an interface's hooks and removes them."""

    mode: Mode

    def attach(self, ifindex: int, ifname: str, progs: Mapping[Hook, Program]) -> Attachment: ...

    def detach(self, att: Attachment) -> None: ...


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
                    reason=_reason(err),
                ) from err
            att.hooks.append(hook)
        return att

    def detach(self, att: Attachment) -> None:
        while att.link_fds:
            os.close(att.link_fds.pop())
        att.hooks.clear()


def _filter_name(msg: Any) -> str:
    opts = msg.get_attr("TCA_OPTIONS")
    return str(opts.get_attr("TCA_BPF_NAME") or "") if opts is not None else ""


def _our_filters(ipr: Any, ifindex: int, hook: Hook) -> tuple[list[Any], list[Any]]:
    """(our filters, foreign filters) on one clsact hook; chain heads (handle 0) skipped."""
    ours: list[Any] = []
    foreign: list[Any] = []
    for msg in ipr.get_filters(index=ifindex, parent=CLSACT_PARENT[hook]):
        if msg["handle"] == 0:
            continue
        mine = (
            msg["info"] >> 16 in OUR_PRIOS
            and msg["handle"] == FILTER_HANDLE
            and _filter_name(msg).startswith(FILTER_NAME_PREFIX)
        )
        (ours if mine else foreign).append(msg)
    return ours, foreign


def _has_clsact(ipr: Any, ifindex: int) -> bool:
    for q in ipr.get_qdiscs(index=ifindex):
        if q.get_attr("TCA_KIND") == "clsact" and q["index"] == ifindex:
            return True
    return False


class ClsactAttacher:
    """clsact qdisc + bpf filters marked as ours (see the module docstring)."""

    mode: Mode = "clsact"

    def attach(self, ifindex: int, ifname: str, progs: Mapping[Hook, Program]) -> Attachment:
        att = Attachment(ifindex=ifindex, ifname=ifname, mode="clsact")
        where = f"{ifname} (ifindex {ifindex})"
        with IPRoute() as ipr:
            try:
                if not _has_clsact(ipr, ifindex):
                    try:
                        ipr.tc("add", "clsact", ifindex)
                        att.created_qdisc = True
                    except NetlinkError as err:
                        if err.code != errno.EEXIST:  # EEXIST: someone added one meanwhile
                            raise
                for hook, prog in progs.items():
                    ours, foreign = _our_filters(ipr, ifindex, hook)
                    clash = [
                        f
                        for f in foreign
                        if f["info"] >> 16 == FILTER_PRIO and f["handle"] == FILTER_HANDLE
                    ]
                    if clash:
                        raise AttachError(
                            f"{where}: a foreign filter holds retinad's tc priority "
                            f"{FILTER_PRIO:#x} handle {FILTER_HANDLE:#x} on {hook.value}; "
                            "not touching it",
                            reason="conflict",
                        )
                    for old in [f for f in ours if f["info"] >> 16 != FILTER_PRIO]:
                        ipr.tc("del-filter", "bpf", ifindex, FILTER_HANDLE,
                               parent=CLSACT_PARENT[hook], prio=old["info"] >> 16)  # fmt: skip
                    current = [f for f in ours if f["info"] >> 16 == FILTER_PRIO]
                    ipr.tc(
                        "replace-filter" if current else "add-filter",
                        "bpf",
                        ifindex,
                        FILTER_HANDLE,
                        fd=prog.fd,
                        name=FILTER_NAME_PREFIX + prog.name.removeprefix("pp_"),
                        parent=CLSACT_PARENT[hook],
                        prio=FILTER_PRIO,
                        classid=1,
                        direct_action=True,
                    )
                    att.hooks.append(hook)
            except (NetlinkError, OSError) as err:
                self._undo(ipr, att)
                raise AttachError(
                    f"{where}: clsact attach failed: {err}", reason=_reason(err)
                ) from err
            except AttachError:
                self._undo(ipr, att)
                raise
        return att

    def detach(self, att: Attachment) -> None:
        with IPRoute() as ipr:
            self._undo(ipr, att)

    def _undo(self, ipr: Any, att: Attachment) -> None:
        """Delete our filters (and our qdisc if now empty); a vanished interface is fine."""
        try:
            for hook in list(att.hooks):
                for f in _our_filters(ipr, att.ifindex, hook)[0]:
                    ipr.tc(
                        "del-filter",
                        "bpf",
                        att.ifindex,
                        FILTER_HANDLE,
                        parent=CLSACT_PARENT[hook],
                        prio=f["info"] >> 16,
                    )
                att.hooks.remove(hook)
            if att.created_qdisc:
                empty = all(
                    not _our_filters(ipr, att.ifindex, h)[1] for h in (Hook.INGRESS, Hook.EGRESS)
                )
                if empty:
                    ipr.tc("del", "clsact", att.ifindex)
                att.created_qdisc = False
        except NetlinkError as err:
            if err.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                raise


def remove_stale_filters(ifindex: int) -> int:
    """Delete retinad filters left on an interface by an earlier run; returns how many.

    Used at start for interfaces this run will not attach with clsact (not selected, or
    tcx mode), so an earlier run killed with -9 cannot keep counting in parallel.
    """
    removed = 0
    with IPRoute() as ipr:
        try:
            if not _has_clsact(ipr, ifindex):
                return 0
            for hook in (Hook.INGRESS, Hook.EGRESS):
                for f in _our_filters(ipr, ifindex, hook)[0]:
                    ipr.tc(
                        "del-filter",
                        "bpf",
                        ifindex,
                        FILTER_HANDLE,
                        parent=CLSACT_PARENT[hook],
                        prio=f["info"] >> 16,
                    )
                    removed += 1
        except NetlinkError as err:
            if err.code not in (errno.ENODEV, errno.ENOENT, errno.EINVAL):
                raise
    return removed


def make_attacher(mode: Literal["auto", "tcx", "clsact"]) -> Attacher:
    """The attacher for a configured mode; auto picks tcx when the kernel has it."""
    if mode == "clsact":
        return ClsactAttacher()
    if mode == "tcx" or tcx_supported():
        if mode == "tcx" and not tcx_supported():
            raise AttachError(
                '[packetparser].attach_mode = "tcx" but this kernel has no tcx (needs 6.6+); '
                'use "auto" or "clsact"',
                reason="unsupported",
            )
        return TcxAttacher()
    return ClsactAttacher()
