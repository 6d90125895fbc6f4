"""clsact (any kernel with sched_cls): ``bpf`` filters with direct-action, through pyroute2.

The filters outlive the process, so they are marked as ours: priority ``FILTER_PRIO`` (1),
handle ``FILTER_HANDLE`` (0x7e7ad) and a name starting ``retinad_pp_``. Priority 1 is the
first tc runs; Cilium and Retina use it too (handle 1), and cls_bpf runs the filters of
one priority newest first, so ours, added after theirs, sees every packet before their
verdict ends the chain. (A filter added at prio 1 after ours runs before it: nothing in
tc can prevent that; DESIGN.md says so.) Filters of 0.1 at prio 0x0a00 are still
recognised as ours (``LEGACY_FILTER_PRIOS``). A later start replaces a filter with that
mark in place (no gap, no duplicate) and ``remove_stale_filters`` removes them from
interfaces no longer selected. The clsact qdisc is created only when absent and deleted on
detach only if this process created it and no filter is left on it; foreign filters and
qdiscs are never touched. Which qdiscs retinad created is also written to a small state
file (``CreatedQdiscs``, under /run/retinad: it survives a crash but not a reboot, as the
qdiscs do), so after a kill -9 the next run adopts or removes what its predecessor created
and nobody else uses.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from retinad.errors import AttachError
from retinad.kernel.attachment import Attachment, Hook, Mode, Program, failure_reason

CLSACT_PARENT = {Hook.INGRESS: 0xFFFFFFF2, Hook.EGRESS: 0xFFFFFFF3}
FILTER_PRIO = 1
LEGACY_FILTER_PRIOS = (0x0A00,)
"""Priorities earlier builds used: their filters are ours too (replaced or swept)."""
OUR_PRIOS = (FILTER_PRIO, *LEGACY_FILTER_PRIOS)
FILTER_HANDLE = 0x7E7AD
FILTER_NAME_PREFIX = "retinad_pp_"


def _reason(err: OSError | NetlinkError) -> str:
    return failure_reason(err.errno if isinstance(err, OSError) else err.code)


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


# --- what retinad created, across a crash -------------------------------------------------

STATE_DIR_ENV = "RETINAD_STATE_DIR"
DEFAULT_STATE_DIR = "/run/retinad"
_GONE = (errno.ENODEV, errno.ENOENT, errno.EINVAL)
"""Netlink answers meaning the object (or its interface) is already gone."""


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks (/proc/PID/stat field 22): with the pid it
    names one process, so a recycled pid is not mistaken for the run that wrote it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


class CreatedQdiscs:
    """The clsact qdiscs retinad created, by ifindex: {ifname, pid, start} in a JSON file.

    An entry whose process is gone belongs to a crashed predecessor: the next run in
    clsact mode adopts the qdisc (and deletes it on stop as its own), and the stale-filter
    sweep deletes it where this run does not attach, once no filter is left on it. Every
    change is a read-modify-write under flock, so concurrent runs do not lose entries.
    """

    def __init__(self, state_dir: str | None = None) -> None:
        folder = state_dir or os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR
        self.path = Path(folder) / "clsact-qdiscs.json"
        self._me = {"pid": os.getpid(), "start": _start_time(os.getpid())}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, object]]]:
        """The entries, written back on exit. Best effort: without a writable state dir
        (an unprivileged test run) it yields an empty, unsaved table instead of failing
        the attach; only the crash clean-up is then lost."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError:
            yield {}
            return
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            try:
                entries = json.loads(f.read() or "{}")
                if not isinstance(entries, dict):
                    entries = {}
            except ValueError:
                entries = {}  # a torn or foreign file: start over rather than fail attach
            before = json.dumps(entries, sort_keys=True)
            yield entries
            after = json.dumps(entries, sort_keys=True)
            if after != before:
                f.seek(0)
                f.truncate()
                f.write(after)
                f.flush()

    def record(self, ifindex: int, ifname: str) -> None:
        """This process created a clsact qdisc on ``ifindex``."""
        with self._locked() as entries:
            entries[str(ifindex)] = {"ifname": ifname, **self._me}

    def forget(self, ifindex: int) -> None:
        with self._locked() as entries:
            entries.pop(str(ifindex), None)

    def claim_orphan(self, ifindex: int, ifname: str) -> bool:
        """Whether a dead run created the qdisc on this interface (same index and name);
        if so the entry is now this process's."""
        with self._locked() as entries:
            entry = entries.get(str(ifindex))
            if not isinstance(entry, dict) or entry.get("ifname") != ifname:
                return False
            pid = entry.get("pid")
            if isinstance(pid, int) and _start_time(pid) == entry.get("start"):
                return False  # its creator still runs: not ours to take
            entries[str(ifindex)] = {"ifname": ifname, **self._me}
            return True


class ClsactAttacher:
    """clsact qdisc + bpf filters marked as ours (see the module docstring)."""

    mode: Mode = "clsact"

    def __init__(self, created: CreatedQdiscs | None = None) -> None:
        self.created = created or CreatedQdiscs()

    def attach(self, ifindex: int, ifname: str, progs: Mapping[Hook, Program]) -> Attachment:
        att = Attachment(ifindex=ifindex, ifname=ifname, mode="clsact")
        where = f"{ifname} (ifindex {ifindex})"
        with IPRoute() as ipr:
            try:
                if not _has_clsact(ipr, ifindex):
                    try:
                        ipr.tc("add", "clsact", ifindex)
                        att.created_qdisc = True
                        self.created.record(ifindex, ifname)
                    except NetlinkError as err:
                        if err.code != errno.EEXIST:  # EEXIST: someone added one meanwhile
                            raise
                elif self.created.claim_orphan(ifindex, ifname):
                    att.created_qdisc = True  # a crashed run made it: remove it on stop
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
        """Delete our filters, then our qdisc if nothing is left on it. Each object is
        undone on its own: one already gone (ENOENT, a vanished interface) never leaves
        the others in place. The first other error is raised after trying them all."""
        failed: list[NetlinkError] = []
        for hook in list(att.hooks):
            try:
                _delete_our_filters(ipr, att.ifindex, hook)
            except NetlinkError as err:
                if err.code not in _GONE:
                    failed.append(err)
                    continue
            att.hooks.remove(hook)
        if att.created_qdisc:
            try:
                if _delete_qdisc_if_unused(ipr, att.ifindex):
                    self.created.forget(att.ifindex)
            except NetlinkError as err:
                if err.code not in _GONE:
                    failed.append(err)
                else:
                    self.created.forget(att.ifindex)
            att.created_qdisc = False
        if failed:
            raise failed[0]


def _delete_our_filters(ipr: Any, ifindex: int, hook: Hook) -> int:
    """Delete retinad's filters on one hook, each on its own; returns how many went."""
    removed = 0
    for f in _our_filters(ipr, ifindex, hook)[0]:
        try:
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
            if err.code not in _GONE:  # already deleted by someone else: fine
                raise
    return removed


def _delete_qdisc_if_unused(ipr: Any, ifindex: int) -> bool:
    """Delete the clsact qdisc when no filter at all is left on it; True if it is gone."""
    if not _has_clsact(ipr, ifindex):
        return True
    for hook in (Hook.INGRESS, Hook.EGRESS):
        ours, foreign = _our_filters(ipr, ifindex, hook)
        if ours or foreign:
            return False
    ipr.tc("del", "clsact", ifindex)
    return True


def remove_stale_filters(ifindex: int, created: CreatedQdiscs | None = None) -> int:
    """Delete retinad filters left on an interface by an earlier run; returns how many.

    Used at start for interfaces this run will not attach with clsact (not selected, or
    tcx mode), so an earlier run killed with -9 cannot keep counting in parallel. A clsact
    qdisc that such a run created (per ``CreatedQdiscs``) goes too once nothing uses it.
    """
    removed = 0
    with IPRoute() as ipr:
        try:
            if not _has_clsact(ipr, ifindex):
                return 0
            for hook in (Hook.INGRESS, Hook.EGRESS):
                removed += _delete_our_filters(ipr, ifindex, hook)
            links = ipr.get_links(ifindex)
            ifname = str(links[0].get_attr("IFLA_IFNAME")) if links else ""
            ledger = created or CreatedQdiscs()
            orphan = bool(ifname) and ledger.claim_orphan(ifindex, ifname)
            if orphan and _delete_qdisc_if_unused(ipr, ifindex):
                ledger.forget(ifindex)
        except NetlinkError as err:
            if err.code not in _GONE:
                raise
    return removed
