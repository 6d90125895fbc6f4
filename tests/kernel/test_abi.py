"""retinad/kernel/abi.py against bcc's own view of bpf/retinad.h (packetparser structs).

bcc compiles packetparser.c (which declares a map per struct) and describes each map's
key and value as ctypes built from clang's layout; every size and field offset of the
Python mirror must match it, so a drift between the header and abi.py fails here.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

import pytest

from retinad.kernel import abi
from retinad.kernel.compile import compile_program
from tests.kernel.pp_helpers import bpf_dir


@pytest.fixture(scope="module")
def bpf() -> Iterator[Any]:
    b = compile_program(
        bpf_dir(), "packetparser.c", {"RETINAD_ADVANCED": 1, "RETINAD_REMOTE_CONTEXT": 1}
    )
    yield b
    b.cleanup()


def layout(t: type[ctypes.Structure]) -> tuple[int, list[tuple[str, int, int]]]:
    fields = [
        (name, getattr(t, name).offset, getattr(t, name).size)
        for name, *_ in t._fields_  # type: ignore[misc]
    ]
    return ctypes.sizeof(t), fields


@pytest.mark.parametrize(
    ("table", "side", "mirror"),
    [
        ("pp_iface", "Key", abi.IfaceKey),
        ("pp_iface", "sLeaf", abi.TrafficValue),
        ("pp_endpoint", "Key", abi.EndpointKey),
        ("pp_endpoint", "sLeaf", abi.TrafficValue),
        ("pp_remote", "Key", abi.RemoteKey),
        ("pp_remote", "sLeaf", abi.TrafficValue),
        ("lat_targets", "Key", abi.LatencyTargetKey),
        ("lat_pending", "Key", abi.LatencyConnKey),
        ("lat_pending", "Leaf", abi.LatencyPending),
        ("lat_expired", "Key", abi.LatencyConnKey),
        ("lat_hist", "sLeaf", abi.LatencyHist),
    ],
)
def test_mirror_matches_bcc_layout(bpf: Any, table: str, side: str, mirror: Any) -> None:
    bcc_type = getattr(bpf[table.encode()], side)
    assert layout(mirror) == layout(bcc_type)


def test_traffic_value_is_a_whole_number_of_words() -> None:
    """BatchReader sums per-CPU values as u64 words; the kernel pads per-CPU values to 8."""
    assert ctypes.sizeof(abi.TrafficValue) == 8 * (2 + abi.TCP_NFLAGS)


def test_latency_constants_match_the_header(bpf: Any) -> None:
    """Map sizes the header fixes, as bcc created them."""
    assert bpf[b"lat_targets"].max_entries == abi.LAT_MAX_PREFIXES
    assert bpf[b"lat_hist"].max_entries == abi.LAT_MAX_TARGETS * len(abi.LAT_STAGE_NAMES) * 2
