"""Neighbours on the same hook: retinad counts exactly beside foreign tc/tcx programs.

A foreign program here counts the test's UDP packets (port 9999) in its own map and
returns a verdict, as a policy program (Cilium) would. retinad must see every packet
whatever was attached before it, and everyone after it must still see every packet.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from retinad.config.schema import InterfaceSelection, PacketParserSettings
from retinad.kernel.attach import Hook
from retinad.kernel.clsact import CLSACT_PARENT
from retinad.kernel.tcx import (
    BPF_F_BEFORE,
    BPF_TCX_EGRESS,
    BPF_TCX_INGRESS,
    tcx_link_create,
    tcx_prog_ids,
)
from tests.daemon_proc import wait_for
from tests.kernel.pp_helpers import ifindex, inside, make_plugin, samples, send_udp, value
from tests.netns import Netns, VethLink, sh, veth_to

TC_ACT_OK = 0
TCX_NEXT = -1
FOREIGN_SRC = """
BPF_ARRAY(seen, u64, 1);
int foreign(struct __sk_buff *skb) {
    u8 ip[24];
    __be16 proto;
    if (bpf_skb_load_bytes(skb, 12, &proto, 2) < 0 || proto != bpf_htons(0x0800))
        return VERDICT;
    if (bpf_skb_load_bytes(skb, 14, ip, sizeof(ip)) < 0 || ip[9] != 17 || ip[0] != 0x45)
        return VERDICT;
    if (ip[22] != 0x27 || ip[23] != 0x0f) /* UDP destination port 9999 */
        return VERDICT;
    int k = 0;
    u64 *v = seen.lookup(&k);
    if (v) __sync_fetch_and_add(v, 1);
    return VERDICT;
}
"""


class Foreign:
    """Someone else's sched_cls program with its own packet counter."""

    def __init__(self, verdict: int) -> None:
        from bcc import BPF

        self.bpf = BPF(text=FOREIGN_SRC.replace("VERDICT", str(verdict)).encode())
        self.fd: int = self.bpf.load_func(b"foreign", BPF.SCHED_CLS).fd
        self.links: list[int] = []

    def tcx(self, ifidx: int, attach_type: int, flags: int) -> None:
        self.links.append(tcx_link_create(self.fd, ifidx, attach_type, flags))

    def packets(self) -> int:
        return int(self.bpf[b"seen"][0].value)

    def close(self) -> None:
        for fd in self.links:
            os.close(fd)
        self.bpf.cleanup()


@pytest.fixture
def veth() -> Iterator[VethLink]:
    h, c = Netns(), Netns()
    try:
        with inside(h):
            yield veth_to(c, host_ip="10.87.0.1", peer_ip="10.87.0.2")
    finally:
        c.close()
        h.close()


def settings_for(link: VethLink, mode: str) -> PacketParserSettings:
    return PacketParserSettings(
        interfaces=InterfaceSelection(include=[link.host]),
        container_interfaces=False,
        attach_mode=mode,  # type: ignore[arg-type]
    )


def forward(pp: object, direction: str) -> float:
    s = samples(pp.collect())  # type: ignore[attr-defined]
    return value(s, "retinad_forward_packets_total", direction=direction)


def traffic(link: VethLink, n_in: int, n_out: int) -> None:
    send_udp(link.ns, link.host_ip, n_in, 100)  # tc ingress of the host side
    send_udp(None, link.peer_ip, n_out, 100)  # tc egress of the host side


def test_tcx_first_on_the_hook_beside_verdict_programs(veth: VethLink) -> None:
    idx = ifindex(veth.host)
    # Before retinad starts: a program that returns TC_ACT_OK, which ends a tcx chain.
    before = Foreign(TC_ACT_OK)
    before.tcx(idx, BPF_TCX_INGRESS, 0)
    before.tcx(idx, BPF_TCX_EGRESS, 0)
    after = Foreign(TCX_NEXT)
    pp = make_plugin(settings_for(veth, "tcx"))
    pp.start()
    try:
        # After: another tool that also asks to run first, and passes packets on.
        after.tcx(idx, BPF_TCX_INGRESS, BPF_F_BEFORE)
        after.tcx(idx, BPF_TCX_EGRESS, BPF_F_BEFORE)
        for kind in (BPF_TCX_INGRESS, BPF_TCX_EGRESS):
            ids = tcx_prog_ids(idx, kind)
            assert len(ids) == 3
        traffic(veth, 11, 7)
        wait_for(lambda: forward(pp, "ingress") == 11, what="retinad ingress 11")
        wait_for(lambda: forward(pp, "egress") == 7, what="retinad egress 7")
        # Each foreign program ran once per packet on each hook: 11 in + 7 out.
        assert before.packets() == 18
        assert after.packets() == 18
    finally:
        pp.stop()
        after.close()
        before.close()


def test_clsact_first_beside_a_verdict_filter_at_prio_1(veth: VethLink) -> None:
    """Cilium and Retina put their filters at prio 1; ours shares it and runs first."""
    from pyroute2 import IPRoute

    dev, idx = veth.host, ifindex(veth.host)
    sh("tc", "qdisc", "add", "dev", dev, "clsact")
    first = Foreign(TC_ACT_OK)  # prio 1, as Cilium's, ends the chain
    last = Foreign(TC_ACT_OK)  # a tc-assigned priority, far behind
    with IPRoute() as ipr:
        for hook in (Hook.INGRESS, Hook.EGRESS):
            ipr.tc("add-filter", "bpf", idx, 1, fd=first.fd, name="cilium_like",
                   parent=CLSACT_PARENT[hook], prio=1, classid=1, direct_action=True)  # fmt: skip
            ipr.tc("add-filter", "bpf", idx, 1, fd=last.fd, name="late_policy",
                   parent=CLSACT_PARENT[hook], prio=49152, classid=1,
                   direct_action=True)  # fmt: skip
    pp = make_plugin(settings_for(veth, "clsact"))
    pp.start()
    try:
        traffic(veth, 9, 5)
        wait_for(lambda: forward(pp, "ingress") == 9, what="retinad ingress 9")
        wait_for(lambda: forward(pp, "egress") == 5, what="retinad egress 5")
        assert first.packets() == 14  # retinad's TC_ACT_UNSPEC passed every packet on
        assert last.packets() == 0  # the prio-1 verdict ends the chain, as tc defines
    finally:
        pp.stop()
        first.close()
        last.close()
    lines = sh("tc", "filter", "show", "dev", dev, "ingress").stdout.decode()
    assert "cilium_like" in lines and "late_policy" in lines and "retinad" not in lines


def test_clsact_prio_1_of_another_kind_is_refused_and_left_alone(veth: VethLink) -> None:
    """tc allows one filter kind per priority: a foreign u32 at prio 1 makes our attach
    fail with reason "invalid" (DESIGN.md's neighbour rules); the u32 filter stays."""
    from retinad.errors import AttachError
    from retinad.kernel.attach import Program
    from retinad.kernel.clsact import ClsactAttacher

    dev = veth.host
    sh("tc", "qdisc", "add", "dev", dev, "clsact")
    sh("tc", "filter", "add", "dev", dev, "ingress", "prio", "1", "protocol", "all",
       "u32", "match", "u32", "0", "0")  # fmt: skip
    prog = Foreign(TCX_NEXT)
    try:
        with pytest.raises(AttachError) as info:
            ClsactAttacher().attach(
                ifindex(dev), dev, {Hook.INGRESS: Program(fd=prog.fd, name="pp_host_ingress")}
            )
        assert info.value.reason == "invalid"
        lines = sh("tc", "filter", "show", "dev", dev, "ingress").stdout.decode()
        assert "u32" in lines and "retinad" not in lines
    finally:
        prog.close()
