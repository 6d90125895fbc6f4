"""The latency target trie key and histogram bounds, as bpf/latency.h reads them."""

from __future__ import annotations

import ipaddress
import itertools

from retinad.kernel import abi
from retinad.plugins.latency import Target, bucket_bounds, trie_key


def test_ipv4_key_is_port_then_mapped_address() -> None:
    k = trie_key(Target("db", ipaddress.ip_network("10.0.3.0/24"), 5432))
    assert k.prefixlen == 16 + 96 + 24
    assert bytes(k.port) == (5432).to_bytes(2, "big")
    assert bytes(k.addr) == b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 3, 0])


def test_ipv6_key_any_port() -> None:
    k = trie_key(Target("v6", ipaddress.ip_network("fd00:3::/64"), 0))
    assert k.prefixlen == 16 + 64
    assert bytes(k.port) == b"\0\0"
    assert bytes(k.addr) == ipaddress.IPv6Address("fd00:3::").packed


def test_bounds_are_log2_or_finer_from_100us_to_10s() -> None:
    edges = abi.LAT_EDGES_NS
    assert edges[0] == 100_000 and edges[-1] == 10_000_000_000
    assert all(b <= 2 * a for a, b in itertools.pairwise(edges))
    assert bucket_bounds(1e-9)[:2] == ["0.0001", "0.0002"]
    assert bucket_bounds(1e-6)[-2:] == ["10000", "+Inf"]
