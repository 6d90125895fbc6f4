"""Attachment: tcx and clsact, coexistence with foreign filters, kill -9 and restart.

All on veth pairs in namespaces the test made, with the plugin running in a private
"host" namespace (pp_helpers.inside); a plugin killed with -9 runs in a subprocess there.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from retinad.config.schema import InterfaceSelection, PacketParserSettings
from retinad.errors import AttachError
from retinad.kernel.attach import Hook, Program, make_attacher
from retinad.kernel.clsact import FILTER_HANDLE, FILTER_PRIO, ClsactAttacher
from retinad.kernel.features import has_tcx
from retinad.kernel.tcx import TcxAttacher, tcx_supported
from tests.kernel.pp_helpers import (
    ifindex,
    make_plugin,
    samples,
    send_udp,
    tc_filters,
    tcx_count,
    value,
    wait_for,
)
from tests.netns import Netns, VethLink, sh, veth_to

REPO = Path(__file__).resolve().parents[2]


def settings_for(link: VethLink, mode: str) -> PacketParserSettings:
    """The veth as an explicitly included host interface, nothing else."""
    return PacketParserSettings(
        interfaces=InterfaceSelection(include=[link.host]),
        container_interfaces=False,
        attach_mode=mode,  # type: ignore[arg-type]
    )


def ours(dev: str, hook: str) -> list[str]:
    return [f for f in tc_filters(dev, hook) if f"handle {FILTER_HANDLE:#x}" in f]


def qdiscs(dev: str) -> list[str]:
    return [q for q in sh("tc", "qdisc", "show", "dev", dev).stdout.decode().splitlines() if q]


class ForeignFilter:
    """Someone else's clsact bpf filter that counts what it sees and ends the chain.

    This kernel has neither matchall nor gact, so the foreign filter is a bpf one too,
    added the way any other tool would (its own prio, handle and name).
    """

    SRC = b"""
    BPF_ARRAY(seen, u64, 1);
    int foreign(struct __sk_buff *skb) {
        int k = 0;
        u64 *v = seen.lookup(&k);
        if (v) __sync_fetch_and_add(v, 1);
        return 0; /* TC_ACT_OK: ends the filter chain, as a real policy filter would */
    }
    """

    def __init__(self, dev: str) -> None:
        from bcc import BPF
        from pyroute2 import IPRoute

        self.bpf = BPF(text=self.SRC)
        fd = self.bpf.load_func(b"foreign", BPF.SCHED_CLS).fd
        with IPRoute() as ipr:
            ipr.tc("add-filter", "bpf", ifindex(dev), 1, fd=fd, name="foreign_counter",
                   parent=0xFFFFFFF2, prio=50000, classid=1, direct_action=True)  # fmt: skip

    def packets(self) -> int:
        return int(self.bpf[b"seen"][0].value)


def count_ingress(pp: object) -> float:
    return value(samples(pp.collect()), "retinad_forward_packets_total", direction="ingress")  # type: ignore[attr-defined]


NEEDS_TCX = pytest.mark.skipif(not has_tcx(), reason="no tcx on this kernel (6.6+): clsact only")
BEST = "tcx" if has_tcx() else "clsact"
"""The mode auto picks here, by the same probe ``retinad check`` prints."""


def test_auto_mode_follows_the_tcx_probe() -> None:
    assert tcx_supported() == has_tcx()
    auto = make_attacher("auto")
    assert isinstance(auto, TcxAttacher if has_tcx() else ClsactAttacher), auto
    assert isinstance(make_attacher("clsact"), ClsactAttacher)


@pytest.mark.parametrize("mode", [pytest.param("tcx", marks=NEEDS_TCX), "clsact"])
def test_attach_and_stop_leave_nothing_behind(veth: VethLink, mode: str) -> None:
    assert qdiscs(veth.host) == [] or "clsact" not in " ".join(qdiscs(veth.host))
    pp = make_plugin(settings_for(veth, mode))
    pp.start()
    try:
        idx = ifindex(veth.host)
        if mode == "tcx":
            assert tcx_count(idx) == (1, 1)
            assert ours(veth.host, "ingress") == []
        else:
            assert tcx_count(idx) == (0, 0)
            assert len(ours(veth.host, "ingress")) == 1
            assert len(ours(veth.host, "egress")) == 1
            line = ours(veth.host, "ingress")[0]
            assert f"pref {FILTER_PRIO}" in line and "retinad_pp_host_ingress" in line
        send_udp(veth.ns, veth.host_ip, 9, 100)
        wait_for(lambda: count_ingress(pp) == 9, what="9 packets")
        assert pp.status() == f"attached to 1 interfaces ({mode})"
    finally:
        pp.stop()
    assert tcx_count(ifindex(veth.host)) == (0, 0)
    assert ours(veth.host, "ingress") == ours(veth.host, "egress") == []
    assert not any("clsact" in q for q in qdiscs(veth.host)), "our own qdisc is removed"
    pp.stop()  # twice is fine


def test_foreign_clsact_filter_survives_start_reload_stop(veth: VethLink) -> None:
    dev = veth.host
    sh("tc", "qdisc", "add", "dev", dev, "clsact")
    # Runs after ours (higher prio number) and ends the chain; its map shows traffic.
    other = ForeignFilter(dev)
    foreign = [f for f in tc_filters(dev, "ingress") if "foreign_counter" in f]
    assert len(foreign) == 1
    pp = make_plugin(settings_for(veth, "clsact"))
    pp.start()
    try:
        send_udp(veth.ns, veth.host_ip, 5, 100)
        wait_for(lambda: count_ingress(pp) == 5, what="5 packets")
        wait_for(lambda: other.packets() >= 5, what="foreign filter sees traffic")
        pp.reload(settings_for(veth, "clsact"), pp.ctx.metrics)
        assert len(ours(dev, "ingress")) == 1
        assert [f for f in tc_filters(dev, "ingress") if "foreign_counter" in f] == foreign
    finally:
        pp.stop()
    assert ours(dev, "ingress") == []
    assert [f for f in tc_filters(dev, "ingress") if "foreign_counter" in f] == foreign
    assert any("clsact" in q for q in qdiscs(dev)), "the foreign qdisc stays"
    before = other.packets()
    send_udp(veth.ns, veth.host_ip, 4, 100)
    wait_for(lambda: other.packets() >= before + 4, what="foreign filter still works")


def test_foreign_filter_in_our_slot_is_left_alone(veth: VethLink) -> None:
    dev = veth.host
    sh("tc", "qdisc", "add", "dev", dev, "clsact")
    from pyroute2 import IPRoute

    with IPRoute() as ipr:  # a foreign program in exactly our prio/handle slot
        ipr.tc("add-filter", "bpf", ifindex(dev), FILTER_HANDLE, fd=_dummy_prog_fd(),
               name="someone_else", parent=0xFFFFFFF2, prio=FILTER_PRIO, classid=1,
               direct_action=True)  # fmt: skip
    with pytest.raises(AttachError) as info:
        ClsactAttacher().attach(
            ifindex(dev), dev, {Hook.INGRESS: Program(fd=_dummy_prog_fd(), name="pp_x")}
        )
    assert info.value.reason == "conflict"
    assert dev in str(info.value)
    assert len([f for f in tc_filters(dev, "ingress") if "someone_else" in f]) == 1


def _dummy_prog_fd() -> int:
    """Any sched_cls program fd will do: the attach must be refused before using it."""
    from bcc import BPF

    b = BPF(text=b"int f(struct __sk_buff *skb) { return -1; }")
    fd: int = b.load_func(b"f", BPF.SCHED_CLS).fd
    _keep.append(b)
    return fd


_keep: list[object] = []


@pytest.mark.parametrize(
    "attacher",
    [pytest.param(TcxAttacher(), marks=NEEDS_TCX), ClsactAttacher()],
    ids=["tcx", "clsact"],
)
def test_missing_interface_is_an_attach_error(host: Netns, attacher: object) -> None:
    with pytest.raises(AttachError) as info:
        attacher.attach(  # type: ignore[attr-defined]
            99999, "rtnothere", {Hook.INGRESS: Program(fd=_dummy_prog_fd(), name="pp_x")}
        )
    assert info.value.reason == "no_such_interface"
    assert "rtnothere" in str(info.value)


RUNNER = """
import logging, sys, time
from retinad.config.schema import InterfaceSelection, PacketParserSettings
from tests.kernel.pp_helpers import make_plugin
dev, mode = sys.argv[1], sys.argv[2]
pp = make_plugin(PacketParserSettings(interfaces=InterfaceSelection(include=[dev]),
                 container_interfaces=False, attach_mode=mode))
pp.start()
print("ready", pp.status(), flush=True)
time.sleep(3600)
"""


def run_and_kill9(host: Netns, dev: str, mode: str) -> None:
    """Start the plugin in a subprocess in ``host``, wait until attached, kill -9 it."""
    # the checkout first, then whatever path the suite itself runs with (a guest's packages)
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    with subprocess.Popen(
        ["ip", "netns", "exec", host.name, sys.executable, "-c", RUNNER, dev, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stderr is not None
            # a deadline, not a speed claim: the runner imports bcc and compiles, which
            # takes seconds natively and minutes under emulation (make test-kernels)
            ready, _, _ = select.select([proc.stdout], [], [], 240)
            line = proc.stdout.readline().decode() if ready else ""
            if not line.startswith("ready attached to 1 interfaces"):
                proc.kill()
                raise AssertionError(f"runner: {line!r} {proc.stderr.read().decode()}")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)


def test_kill9_clsact_then_restart_counts_once(host: Netns, veth: VethLink) -> None:
    dev = veth.host
    run_and_kill9(host, dev, "clsact")
    # The killed run's filters outlive it (that is clsact)...
    assert len(ours(dev, "ingress")) == 1 and len(ours(dev, "egress")) == 1
    pp = make_plugin(settings_for(veth, "clsact"))
    pp.start()
    try:
        # ...and the new run replaces them in place: still exactly one per hook.
        assert len(ours(dev, "ingress")) == 1 and len(ours(dev, "egress")) == 1
        send_udp(veth.ns, veth.host_ip, 12, 100)
        wait_for(lambda: count_ingress(pp) == 12, what="12 packets")
        s = samples(pp.collect())
        assert value(s, "retinad_forward_bytes_total", direction="ingress") == 12 * 142
    finally:
        pp.stop()
    assert ours(dev, "ingress") == ours(dev, "egress") == []


@NEEDS_TCX
def test_kill9_tcx_leaves_nothing(host: Netns, veth: VethLink) -> None:
    dev = veth.host
    run_and_kill9(host, dev, "tcx")
    wait_for(lambda: tcx_count(ifindex(dev)) == (0, 0), what="tcx links gone with the process")
    pp = make_plugin(settings_for(veth, "tcx"))
    pp.start()
    try:
        assert tcx_count(ifindex(dev)) == (1, 1)
        send_udp(veth.ns, veth.host_ip, 7, 100)
        wait_for(lambda: count_ingress(pp) == 7, what="7 packets")
    finally:
        pp.stop()


@NEEDS_TCX
def test_stale_clsact_filters_are_removed_when_starting_in_tcx_mode(
    host: Netns, veth: VethLink
) -> None:
    dev = veth.host
    run_and_kill9(host, dev, "clsact")
    assert len(ours(dev, "ingress")) == 1
    pp = make_plugin(settings_for(veth, "tcx"))
    pp.start()
    try:
        assert ours(dev, "ingress") == ours(dev, "egress") == []
        assert tcx_count(ifindex(dev)) == (1, 1)
    finally:
        pp.stop()


def test_reload_attaches_new_and_detaches_removed(host: Netns) -> None:
    a_ns, b_ns = Netns(), Netns()
    try:
        a = veth_to(a_ns, host_ip="10.89.1.1", peer_ip="10.89.1.2")
        b = veth_to(b_ns, host_ip="10.89.2.1", peer_ip="10.89.2.2")
        pp = make_plugin(settings_for(a, BEST))
        pp.start()
        try:
            assert set(pp.attached()) == {ifindex(a.host)}
            pp.reload(settings_for(b, BEST), pp.ctx.metrics)
            assert set(pp.attached()) == {ifindex(b.host)}
            if BEST == "tcx":
                assert tcx_count(ifindex(a.host)) == (0, 0)
                assert tcx_count(ifindex(b.host)) == (1, 1)
            else:
                assert ours(a.host, "ingress") == ours(a.host, "egress") == []
                assert len(ours(b.host, "ingress")) == len(ours(b.host, "egress")) == 1
        finally:
            pp.stop()
    finally:
        a_ns.close()
        b_ns.close()
