"""A veth whose peer is still in this namespace has no settled role: it is held
unattached until its peer moves (then attached once, as container) or the settle deadline
passes with the peer still here (then attached once, as host). Docker's own veths are
tested in tests/e2e/test_docker_roles.py; these are the same kernel events made with
``ip link``, in a namespace of the test's own."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from retinad.config.schema import PacketParserSettings
from retinad.kernel.interfaces import Role
from retinad.plugins.packetparser import PacketParser
from tests.daemon_proc import wait_for
from tests.kernel.pp_helpers import ifindex, inside, make_plugin, samples
from tests.netns import Netns, sh, unique

HELD = "waiting up to"


@pytest.fixture
def host() -> Iterator[Netns]:
    h = Netns()
    try:
        with inside(h):
            yield h
    finally:
        h.close()


@pytest.fixture
def pp(host: Netns) -> Iterator[PacketParser]:
    plugin = make_plugin(PacketParserSettings())  # the default selection
    plugin.start()
    try:
        yield plugin
    finally:
        plugin.stop()


def lines(caplog: pytest.LogCaptureFixture, ifname: str) -> list[str]:
    """The held/attached messages about ``ifname``, in order, without the ifindex."""
    out = []
    for r in caplog.records:
        msg = r.getMessage()
        if msg.startswith(f"{ifname} (") and HELD in msg:
            out.append("held")
        elif m := re.fullmatch(rf"attached to {re.escape(ifname)} \(ifindex \d+\) as (\w+)", msg):
            out.append(f"attached as {m.group(1)}")
    return out


def info_roles(pp: PacketParser, idx: int) -> list[str]:
    s = samples(pp.collect())
    return [
        dict(ls)["role"]
        for (n, ls), _ in s.items()
        if n == "retinad_interface_info" and dict(ls)["ifindex"] == str(idx)
    ]


def test_veth_whose_peer_moves_is_attached_once_as_container(
    host: Netns, pp: PacketParser, caplog: pytest.LogCaptureFixture
) -> None:
    """Docker's order: the pair is made here, the host end set up, the peer moved later."""
    caplog.set_level(logging.DEBUG, logger="retinad")
    container = Netns()
    try:
        a, b = unique("rts"), unique("rtp")
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", a, "up")
        idx = ifindex(a)
        wait_for(lambda: lines(caplog, a) == ["held"], what=f"{a} held")
        assert idx not in pp.attached()
        assert info_roles(pp, idx) == []
        sh("ip", "link", "set", b, "netns", container.name)
        wait_for(lambda: pp.attached().get(idx) == (a, Role.CONTAINER), what="as container")
        assert info_roles(pp, idx) == ["container"]
        assert lines(caplog, a) == ["held", "attached as container"]
        assert pp.attach_errors() == {}
    finally:
        container.close()


def test_veth_pair_that_stays_here_is_attached_once_as_host(
    host: Netns, pp: PacketParser, caplog: pytest.LogCaptureFixture
) -> None:
    """Both ends up and staying: after the settle deadline each end is a host interface,
    attached once; deleting the pair forgets both."""
    caplog.set_level(logging.DEBUG, logger="retinad")
    a, b = unique("rts"), unique("rts")
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    sh("ip", "link", "set", a, "up")
    sh("ip", "link", "set", b, "up")
    ia, ib = ifindex(a), ifindex(b)
    wait_for(
        lambda: pp.attached().get(ia) == (a, Role.HOST) and pp.attached().get(ib) == (b, Role.HOST),
        timeout=15,
        what="both ends attached as host after the settle deadline",
    )
    assert lines(caplog, a) == ["held", "attached as host"]
    assert lines(caplog, b) == ["held", "attached as host"]
    assert info_roles(pp, ia) == ["host"] and info_roles(pp, ib) == ["host"]
    sh("ip", "link", "del", a)
    wait_for(lambda: ia not in pp.attached() and ib not in pp.attached(), what="pair forgotten")
    assert pp.attach_errors() == {}


def test_veth_deleted_while_held_is_never_attached(
    host: Netns, pp: PacketParser, caplog: pytest.LogCaptureFixture
) -> None:
    """A pair deleted before its deadline: its hold ends with it, nothing is attached (and
    no attach error is counted when the deadline would have passed)."""
    caplog.set_level(logging.DEBUG, logger="retinad")
    a, b = unique("rts"), unique("rtp")
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
    sh("ip", "link", "set", a, "up")
    wait_for(lambda: lines(caplog, a) == ["held"], what=f"{a} held")
    sh("ip", "link", "del", a)
    # A fresh pair made after the deletion and settled as host shows the deadline of the
    # deleted one has passed (its timer started earlier): the deleted one must stay silent.
    c, d = unique("rts"), unique("rts")
    sh("ip", "link", "add", c, "type", "veth", "peer", "name", d)
    sh("ip", "link", "set", c, "up")
    ic = ifindex(c)
    wait_for(lambda: ic in pp.attached(), timeout=15, what=f"{c} settled")
    assert lines(caplog, a) == ["held"]
    assert pp.attach_errors() == {}
