"""packetparser's interface reconciliation: which interfaces carry which programs, kept
true from netlink link events.

``InterfaceReconciler`` follows the interfaces of this namespace (kernel/links.py), decides
each one's role from the [packetparser] selection (kernel/interfaces.py) and attaches the
role's programs (kernel/attach.py): host programs, their ``_l3`` variant on links without
a MAC header, or container-veth programs. A role changes only when the interface's own
record or the selection (on reload) says so, and then by a clean detach before the new
attach; an interface that disappears is forgotten.

A veth whose peer is still in this namespace has no settled role yet: Docker (and CNI
plugins, and ``ip link add ... peer`` then ``set ... netns``) create the pair here, bring
the host end up, and move the peer into the container a moment later (about 200 ms on an
idle Docker host). Attached at once it would count that container's first packets as node
traffic and be re-attached as container when the peer moves. So such a veth is *held*
unattached while the role it would get with its peer moved differs from the role it has
now: the link event that reports the peer in another namespace ends the hold (it is then
attached once, as container), and if none comes within ``SETTLE_SECONDS`` the pair is one
that stays here and the veth is attached in the role it has (host).
Attach failures are logged and counted by reason, never fatal. The collection side
(packetparser.py) only asks which interfaces are container veths.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from retinad.config.schema import PacketParserSettings
from retinad.errors import AttachError
from retinad.exporter import naming
from retinad.kernel.attach import Attacher, Attachment, Hook, Program
from retinad.kernel.attach import remove_stale_filters as _remove_stale
from retinad.kernel.interfaces import LinkInfo, Role, role_of
from retinad.kernel.links import LinkWatcher, default_route_ifindexes

PROGRAMS: dict[Role, dict[Hook, str]] = {
    Role.HOST: {Hook.INGRESS: "pp_host_ingress", Hook.EGRESS: "pp_host_egress"},
    Role.CONTAINER: {Hook.INGRESS: "pp_ep_ingress", Hook.EGRESS: "pp_ep_egress"},
}
L3_PROGRAMS: dict[Hook, str] = {
    Hook.INGRESS: "pp_host_ingress_l3",
    Hook.EGRESS: "pp_host_egress_l3",
}
"""Host programs for links without a MAC header (LinkInfo.l3: tun, WireGuard, ipip)."""
PROGRAM_NAMES = tuple(
    name for table in (*PROGRAMS.values(), L3_PROGRAMS) for name in table.values()
)
"""Every program the reconciler may attach: packetparser.py loads them all."""
INTERFACE_INFO = "retinad_interface_info"
SETTLE_SECONDS = 2.0
"""How long a veth whose peer is still in this namespace is held unattached, waiting for
the peer to move (see the module docstring). Docker moves it within about 200 ms on an idle
host; 2 s leaves room for a loaded one, and delays only veth pairs that stay in the host
namespace, which are rare (and whose role is host either way)."""


@dataclass
class _Attached:
    role: Role
    att: Attachment


class InterfaceReconciler:
    """Keeps the attachments matching the selection; see the module docstring."""

    def __init__(
        self,
        settings: PacketParserSettings,
        attacher: Attacher,
        programs: Mapping[str, Program],
        logger: logging.Logger,
    ) -> None:
        self.settings = settings
        self._attacher = attacher
        self._programs = dict(programs)
        self._log = logger
        self._lock = threading.RLock()
        self._watcher: LinkWatcher | None = None
        self._attached: dict[int, _Attached] = {}
        self._container_ifindexes: set[int] = set()
        self._errors: Counter[str] = Counter()
        self._uplink_judged: dict[int, bool] = {}
        self._held: dict[int, threading.Timer] = {}
        """ifindex -> the settle deadline of a veth whose peer is still here."""
        self._settled: set[int] = set()
        """Veths whose settle deadline passed with the peer still here: their role is the
        one they have (until a real change: the peer moves, the link is deleted)."""
        """ifindex -> whether that veth (peer in another namespace) carries our default route."""
        self._running = False
        """Attach only while True (under _lock): a link callback that comes late from a
        stopping watcher must not attach the programs stop() is about to close, or the
        next start finds the interface "already attached" to a dead generation."""

    @property
    def mode(self) -> str:
        return self._attacher.mode

    def start(self) -> None:
        """Follow the links (attaching every selected one now), warn about patterns that
        match nothing, and remove filters a crashed run left behind."""
        with self._lock:
            self._running = True
        self._watcher = LinkWatcher(
            on_link=self.on_link,
            on_link_removed=self._on_link_removed,
            logger=self._log,
            name="packetparser-links",
        )
        self._watcher.start()
        self._warn_unmatched()
        self._sweep_stale()

    def stop(self) -> None:
        with self._lock:
            self._running = False
            for timer in self._held.values():
                timer.cancel()
            self._held.clear()
            self._settled.clear()
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
        with self._lock:
            for ifindex in list(self._attached):
                self._detach(ifindex)

    def reselect(self, settings: PacketParserSettings) -> None:
        """Apply a reloaded selection to every known interface."""
        with self._lock:
            self.settings = settings
            links = self._watcher.links() if self._watcher else {}
            for ifindex in list(self._attached):
                if ifindex not in links:
                    self._detach(ifindex)
            for link in links.values():
                self._reconcile(link)
        self._warn_unmatched()

    @property
    def alive(self) -> bool:
        return self._watcher is not None and self._watcher.alive

    def status(self) -> str:
        return f"attached to {len(self._attached)} interfaces ({self.mode})"

    def attached(self) -> dict[int, tuple[str, Role]]:
        """ifindex -> (interface name, role) of the current attachments."""
        with self._lock:
            return {i: (a.att.ifname, a.role) for i, a in self._attached.items()}

    def attach_errors(self) -> dict[str, int]:
        with self._lock:
            return dict(self._errors)

    def container_ifindexes(self) -> frozenset[int]:
        """Interfaces attached (now or earlier in this run) as container veths."""
        with self._lock:
            return frozenset(self._container_ifindexes)

    # --- events -----------------------------------------------------------------------

    def on_link(self, link: LinkInfo) -> None:
        """The link watcher's callback for a new or changed interface. Public as the test
        seam for events the kernel cannot be made to show on demand (an interface already
        gone when its event is handled)."""
        with self._lock:
            self._reconcile(link)

    def _on_link_removed(self, link: LinkInfo) -> None:
        with self._lock:
            self._uplink_judged.pop(link.ifindex, None)  # ifindexes are reused
            self._release(link.ifindex)
            self._settled.discard(link.ifindex)
            if link.ifindex in self._attached:
                self._log.info("%s (ifindex %d) is gone", link.name, link.ifindex)
                self._detach(link.ifindex, gone=True)

    def _reconcile(self, link: LinkInfo) -> None:
        """Attach, re-attach or detach one interface so it matches the selection."""
        if not self._running:
            return
        current = self._attached.get(link.ifindex)
        # Whether a veth whose peer is elsewhere is this namespace's uplink is decided once,
        # the first time it is seen so (a new Docker veth has its peer here at first, and
        # is moved a moment later): a default route that moves later changes no role.
        uplink = False
        if link.container_veth:
            if link.ifindex not in self._uplink_judged:
                self._uplink_judged[link.ifindex] = link.ifindex in default_route_ifindexes()
            uplink = self._uplink_judged[link.ifindex]
        role = role_of(
            link,
            self.settings.interfaces,
            container_interfaces=self.settings.container_interfaces,
            uplink=uplink,
        )
        if self._hold(link, role):
            if current is not None:  # its peer came back here: that role no longer holds
                self._detach(link.ifindex)
            return
        if current is not None and current.role == role:
            return
        if current is not None:
            self._detach(link.ifindex)
        if role is None:
            return
        table = L3_PROGRAMS if role is Role.HOST and link.l3 else PROGRAMS[role]
        progs = {hook: self._programs[name] for hook, name in table.items()}
        try:
            att = self._attacher.attach(link.ifindex, link.name, progs)
        except AttachError as err:
            self._errors[err.reason] += 1
            self._log.warning("not attached: %s", err)
            return
        self._attached[link.ifindex] = _Attached(role, att)
        if role is Role.CONTAINER:
            self._container_ifindexes.add(link.ifindex)
        else:
            self._container_ifindexes.discard(link.ifindex)
        self._log.info("attached to %s (ifindex %d) as %s", link.name, link.ifindex, role.value)

    def _hold(self, link: LinkInfo, role: Role | None) -> bool:
        """Whether ``link`` waits for its role to settle (see the module docstring): a veth
        whose peer is in this namespace, not settled yet, whose role would change if the
        peer moved. Starts its settle deadline on first sight; ends the hold otherwise."""
        unsettled = (
            role is not None
            and link.kind == "veth"
            and link.link_netnsid is None
            and link.ifindex not in self._settled
        )
        if unsettled:
            moved = role_of(
                replace(link, link_netnsid=0),
                self.settings.interfaces,
                container_interfaces=self.settings.container_interfaces,
            )
            unsettled = moved != role
        if not unsettled:
            self._release(link.ifindex)
            return False
        if link.ifindex not in self._held:
            timer = threading.Timer(SETTLE_SECONDS, self._settle, args=(link.ifindex,))
            timer.daemon = True
            timer.name = f"retinad-settle-{link.ifindex}"
            self._held[link.ifindex] = timer
            timer.start()
            self._log.debug(
                "%s (ifindex %d): veth with its peer in this namespace; waiting up to %.1f s "
                "for the peer to move before attaching",
                link.name,
                link.ifindex,
                SETTLE_SECONDS,
            )
        return True

    def _release(self, ifindex: int) -> None:
        timer = self._held.pop(ifindex, None)
        if timer is not None:
            timer.cancel()

    def _settle(self, ifindex: int) -> None:
        """The settle deadline of a held veth: its peer stayed here, so its role is the one
        it has now."""
        with self._lock:
            if self._held.pop(ifindex, None) is None or not self._running:
                return  # released (peer moved, link gone) or stopping meanwhile
            self._settled.add(ifindex)
            link = self._watcher.links().get(ifindex) if self._watcher else None
            if link is not None:
                self._reconcile(link)

    def _detach(self, ifindex: int, *, gone: bool = False) -> None:
        entry = self._attached.pop(ifindex, None)
        if entry is None:
            return
        try:
            self._attacher.detach(entry.att)
        except Exception as err:
            if not gone:
                self._log.warning("detaching from %s failed: %s", entry.att.ifname, err)

    def _warn_unmatched(self) -> None:
        """Warn, naming the pattern, for each include pattern no interface matches now (it
        stays in force: a matching interface is attached as soon as it appears), and when
        exclude leaves no host interface."""
        if self._watcher is None:
            return
        names = [link.name for link in self._watcher.links().values()]
        sel = self.settings.interfaces
        for pattern in sel.include:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                self._log.warning(
                    "[packetparser.interfaces] include pattern %r matches no interface; "
                    "watching for one to appear",
                    pattern,
                )
        with self._lock:
            hosts = sum(1 for a in self._attached.values() if a.role is Role.HOST)
        if sel.exclude and not hosts:
            self._log.warning(
                "[packetparser.interfaces] exclude %s leaves no host interface; "
                "watching for one to appear",
                list(sel.exclude),
            )

    def _sweep_stale(self) -> None:
        """Remove filters an earlier run left on interfaces this run does not hold by clsact."""
        if self._watcher is None:
            return
        with self._lock:
            keep = set(self._attached) if self.mode == "clsact" else set()
            for ifindex, link in self._watcher.links().items():
                if ifindex in keep:
                    continue
                try:
                    n = _remove_stale(ifindex)
                except Exception as err:
                    self._log.warning(
                        "%s: removing stale retinad filters failed: %s", link.name, err
                    )
                    continue
                if n:
                    self._log.info("%s: removed %d stale retinad filters", link.name, n)

    # --- metrics ------------------------------------------------------------------------

    def metrics(self) -> list[Metric]:
        """retinad_attach_errors_total, retinad_attached_interfaces, retinad_interface_info."""
        with self._lock:
            errors = dict(self._errors)
            rows = [(a.att.ifname, idx, a.role, a.att.mode) for idx, a in self._attached.items()]
        return attach_families(errors, rows)


def attach_families(
    errors: Mapping[str, int], rows: Sequence[tuple[str, int, Role, str]]
) -> list[Metric]:
    """The attachment families from errors by reason and (name, ifindex, role, mode) rows;
    ``attach_families({}, [])`` for describe()."""
    err = CounterMetricFamily(
        naming.ATTACH_ERRORS,
        "Failed attempts to attach retinad's programs, by reason.",
        labels=["reason"],
    )
    attached = GaugeMetricFamily(
        naming.ATTACHED_INTERFACES,
        "Interfaces carrying packetparser's programs, by role.",
        labels=["role"],
    )
    info = GaugeMetricFamily(
        INTERFACE_INFO,
        "1 for each interface carrying packetparser's programs.",
        labels=["interface", "ifindex", "role", "attach_mode"],
    )
    for reason, n in sorted(errors.items()):
        err.add_metric([reason], n)
    roles = Counter(role for _, _, role, _ in rows)
    for role in Role:
        attached.add_metric([role.value], roles.get(role, 0))
    for name, idx, role, mode in sorted(rows, key=lambda r: r[1]):
        info.add_metric([name, str(idx), role.value, mode], 1)
    return [err, attached, info]
