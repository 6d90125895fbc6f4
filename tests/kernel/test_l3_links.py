"""Links without a MAC header: a tun device (ARPHRD_NONE), counted exactly both ways.

This kernel has tun but no wireguard/ipip/gre modules; they share tun's link-type rule
(kernel/interfaces.py L3_LINK_TYPES), which the unit tests cover.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from retinad.config.schema import InterfaceSelection, PacketParserSettings
from tests.daemon_proc import wait_for
from tests.kernel.pp_helpers import ifindex, make_plugin, samples, send_udp, value
from tests.netns import Netns, sh

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
TUN = "rttun0"


@pytest.fixture
def tun(host: Netns) -> Iterator[int]:
    """A tun device in the private "host" namespace, held open by this test (carrier up)."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TUN.encode(), IFF_TUN | IFF_NO_PI))
        sh("ip", "addr", "add", "10.83.0.1/24", "dev", TUN)
        sh("ip", "link", "set", TUN, "up")
        yield fd
    finally:
        os.close(fd)


def test_tun_counts_exactly_from_the_ip_header(tun: int) -> None:
    settings = PacketParserSettings(
        interfaces=InterfaceSelection(include=[TUN]), container_interfaces=False
    )
    pp = make_plugin(settings)
    pp.start()
    try:
        wait_for(lambda: ifindex(TUN) in pp.attached(), what="tun attached")
        pkt = bytes(
            IP(src="10.83.0.2", dst="10.83.0.1") / UDP(sport=1, dport=9999) / Raw(b"x" * 100)
        )
        assert len(pkt) == 128
        for _ in range(13):
            os.write(tun, pkt)  # the tun's ingress
        send_udp(None, "10.83.0.2", 8, 100)  # its egress
        s = wait_for(
            lambda: (
                (s := samples(pp.collect()))
                and value(s, "retinad_forward_packets_total", direction="ingress") == 13
                and value(s, "retinad_forward_packets_total", direction="egress") == 8
                and s
            ),
            what="13 in, 8 out",
        )
        assert value(s, "retinad_forward_bytes_total", direction="ingress") == 13 * 128
        assert value(s, "retinad_forward_bytes_total", direction="egress") == 8 * 128
    finally:
        pp.stop()
