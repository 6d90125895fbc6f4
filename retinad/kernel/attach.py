"""Attach tc programs to an interface's ingress and egress, and take them off again.

Two mechanisms, chosen by ``[packetparser].attach_mode``, each in its own module:

tcx (kernel 6.6+, preferred; kernel/tcx.py)
    A BPF link per hook, owned by this process's fd: it vanishes when the process exits,
    even on kill -9, so nothing is left behind to count twice.

clsact (any kernel with sched_cls; kernel/clsact.py)
    A ``bpf`` filter with direct-action on the clsact qdisc, through pyroute2, marked as
    ours (priority, handle, name) because it outlives the process; what retinad created is
    recorded across a crash, and foreign filters and qdiscs are never touched.

This module is what the plugins import: the shared types (kernel/attachment.py), the
attacher for a configured mode, and the stale-filter sweep. Every failure raises
AttachError naming the interface, with a short ``reason`` for
``retinad_attach_errors_total{reason}``.
"""

from __future__ import annotations

from typing import Literal

from retinad.errors import AttachError
from retinad.kernel.attachment import Attacher, Attachment, Hook, Mode, Program
from retinad.kernel.clsact import ClsactAttacher, remove_stale_filters
from retinad.kernel.tcx import TcxAttacher, tcx_supported

__all__ = [
    "Attacher",
    "Attachment",
    "Hook",
    "Mode",
    "Program",
    "make_attacher",
    "remove_stale_filters",
]


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
