"""What clsact mode leaves behind: each object undone on its own, and the qdisc a crashed
run created removed by the next run (CreatedQdiscs), never a qdisc someone else made."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from retinad.kernel.attach import Hook, Program
from retinad.kernel.clsact import STATE_DIR_ENV, ClsactAttacher, CreatedQdiscs
from tests.kernel.pp_helpers import ifindex, make_plugin
from tests.kernel.test_attach_packetparser import ours, qdiscs, run_and_kill9, settings_for
from tests.netns import Netns, VethLink, sh


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state dir for this test's runs (also for the subprocess run_and_kill9
    starts, which inherits the environment)."""
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "state"))
    return tmp_path / "state"


def clsact_on(dev: str) -> bool:
    return any(" clsact " in q or q.startswith("qdisc clsact") for q in qdiscs(dev))


def test_kill9_then_the_next_run_removes_the_qdisc_its_predecessor_created(
    host: Netns, veth: VethLink, state_dir: Path
) -> None:
    dev = veth.host
    assert not clsact_on(dev)
    run_and_kill9(host, dev, "clsact")
    assert clsact_on(dev) and len(ours(dev, "ingress")) == 1
    pp = make_plugin(settings_for(veth, "clsact"))
    pp.start()
    pp.stop()
    assert ours(dev, "ingress") == ours(dev, "egress") == []
    assert not clsact_on(dev), qdiscs(dev)
    assert (state_dir / "clsact-qdiscs.json").read_text() == "{}"


def test_kill9_then_a_tcx_run_removes_the_stale_filters_and_the_qdisc(
    host: Netns, veth: VethLink, state_dir: Path
) -> None:
    dev = veth.host
    run_and_kill9(host, dev, "clsact")
    assert clsact_on(dev)
    pp = make_plugin(settings_for(veth, "tcx"))
    pp.start()
    try:
        assert ours(dev, "ingress") == ours(dev, "egress") == []
        assert not clsact_on(dev), qdiscs(dev)
    finally:
        pp.stop()


def test_a_qdisc_someone_else_created_is_never_removed(
    host: Netns, veth: VethLink, state_dir: Path
) -> None:
    dev = veth.host
    sh("tc", "qdisc", "add", "dev", dev, "clsact")
    run_and_kill9(host, dev, "clsact")
    pp = make_plugin(settings_for(veth, "clsact"))
    pp.start()
    pp.stop()
    assert ours(dev, "ingress") == ours(dev, "egress") == []
    assert clsact_on(dev), "retinad removed a clsact qdisc it did not create"


def test_a_live_runs_qdisc_is_not_claimed(tmp_path: Path) -> None:
    ledger = CreatedQdiscs(str(tmp_path))
    ledger.record(7, "eth7")
    assert not CreatedQdiscs(str(tmp_path)).claim_orphan(7, "eth7")  # this process is alive


class _SomeoneElseDeletesFirst:
    """A real IPRoute, except that just before retinad's first filter delete another
    netlink client deletes that very filter: the kernel then answers ENOENT, the race a
    concurrent `tc filter del` or interface teardown produces."""

    def __init__(self, ipr: Any) -> None:
        self._ipr = ipr
        self.raced = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ipr, name)

    def tc(self, command: str, *args: Any, **kw: Any) -> Any:
        if command == "del-filter" and not self.raced:
            self.raced = True
            with IPRoute() as other:
                other.tc(command, *args, **kw)
        return self._ipr.tc(command, *args, **kw)


def test_undo_goes_on_after_an_object_that_is_already_gone(
    host: Netns, veth: VethLink, state_dir: Path
) -> None:
    from bcc import BPF

    bpf = BPF(text=b"int pp_noop(struct __sk_buff *skb) { return -1; }")
    try:
        fn = bpf.load_func(b"pp_noop", BPF.SCHED_CLS)
        prog = Program(fd=fn.fd, name="pp_noop")
        dev, idx = veth.host, ifindex(veth.host)
        attacher = ClsactAttacher()
        att = attacher.attach(idx, dev, {Hook.INGRESS: prog, Hook.EGRESS: prog})
        assert att.created_qdisc and len(ours(dev, "ingress")) == len(ours(dev, "egress")) == 1
        with IPRoute() as real:
            racing = _SomeoneElseDeletesFirst(real)
            attacher._undo(racing, att)  # the documented seam: undo with a given netlink client
        assert racing.raced
        assert ours(dev, "ingress") == ours(dev, "egress") == []  # the egress one went too
        assert not clsact_on(dev), qdiscs(dev)
        assert att.hooks == [] and not att.created_qdisc
    finally:
        bpf.cleanup()
