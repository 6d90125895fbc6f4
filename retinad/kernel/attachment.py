"""What an attachment is, whichever mechanism made it: hooks, programs, the record that
undoes it, the ``Attacher`` protocol both mechanisms implement (kernel/tcx.py,
kernel/clsact.py), and the short reasons attach errors are counted by.

A module of its own so that the two mechanisms and the facade that picks one
(kernel/attach.py) share these types without importing each other.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, Protocol


class Hook(Enum):
    """Which side of an interface a program runs on."""

    INGRESS = "ingress"
    EGRESS = "egress"


Mode = Literal["tcx", "clsact"]


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


class Attacher(Protocol):
    """Puts programs on an interface's hooks and removes them."""

    mode: Mode

    def attach(self, ifindex: int, ifname: str, progs: Mapping[Hook, Program]) -> Attachment: ...

    def detach(self, att: Attachment) -> None: ...


_REASONS = {
    errno.ENODEV: "no_such_interface",
    errno.ENXIO: "no_such_interface",
    errno.ENOENT: "no_such_interface",
    errno.EPERM: "permission",
    errno.EACCES: "permission",
    errno.EEXIST: "conflict",
    errno.EBUSY: "conflict",
    errno.EINVAL: "invalid",
    errno.EOPNOTSUPP: "unsupported",
}


def failure_reason(code: int | None) -> str:
    """The ``reason`` label of retinad_attach_errors_total for an errno (bpf() or netlink)."""
    return _REASONS.get(code or 0, "other")
