"""kernel/netns.py against real namespaces and veths (tests/netns.py): its one rule, that
no thread but a fresh short-lived one ever runs in a foreign namespace, and the answers
each of its three users relies on, exact."""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from retinad.kernel import netns
from tests.netns import Netns, VethLink, veth_to


@pytest.fixture
def peer() -> Iterator[tuple[Netns, VethLink]]:
    ns = Netns()
    try:
        link = veth_to(
            ns,
            host_ip="10.79.3.1",
            peer_ip="10.79.3.2",
            host_ip6="fd79:3::1",
            peer_ip6="fd79:3::2",
        )
        yield ns, link
    finally:
        ns.close()


def thread_netns() -> set[int]:
    """The network namespace inode of every thread of this process."""
    inodes = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            inodes.add(os.stat(f"/proc/self/task/{tid}/ns/net").st_ino)
        except FileNotFoundError:
            continue  # a thread that just ended
    return inodes


def test_read_netns_is_exact_and_leaves_every_thread_where_it_was(
    peer: tuple[Netns, VethLink],
) -> None:
    ns, link = peer
    ours = os.stat(netns.OUR_NETNS).st_ino
    threads = threading.active_count()
    with (
        netns.opened(f"/run/netns/{ns.name}") as fd,
        netns.opened(netns.OUR_NETNS) as our_fd,
    ):
        view = netns.read_netns(fd, our_fd)
    assert view == netns.NetnsView(
        ips=frozenset({ipaddress.ip_address("10.79.3.2"), ipaddress.ip_address("fd79:3::2")}),
        ifindexes=frozenset({link.ifindex()}),
    )  # no 127.0.0.1, ::1 or fe80::
    assert thread_netns() == {ours}
    assert threading.active_count() == threads  # the reader thread is gone


def test_run_inside_hands_back_errors_and_the_caller_never_moves(
    peer: tuple[Netns, VethLink],
) -> None:
    ns, _ = peer
    ours = os.stat(netns.OUR_NETNS).st_ino
    with netns.opened(f"/run/netns/{ns.name}") as fd:
        inside = netns.run_inside(fd, lambda: os.stat("/proc/thread-self/ns/net").st_ino)
        assert inside == os.fstat(fd).st_ino != ours
        with pytest.raises(ZeroDivisionError):
            netns.run_inside(fd, lambda: 1 // 0)
    with netns.opened("/proc/self/ns/uts") as uts, pytest.raises(OSError, match="setns"):
        netns.run_inside(uts, lambda: None)  # not a network namespace: EINVAL
    assert os.stat("/proc/thread-self/ns/net").st_ino == ours
    assert thread_netns() == {ours}


def test_the_host_side_answers_agree_with_the_kernel(peer: tuple[Netns, VethLink]) -> None:
    """What docker (nsid -> veths) and host (nsid -> name) read without entering."""
    ns, link = peer
    pid_in_ns = ns.popen(["sleep", "30"])
    try:
        with IPRoute() as ipr:
            table = netns.veths_by_peer_nsid(ipr)
            with netns.opened(f"/run/netns/{ns.name}") as fd:
                nsid = netns.nsid_of(ipr, fd)
            assert nsid != netns.NOT_ASSIGNED
            assert table[nsid] == [link.ifindex()]
            # the same namespace reached through a process in it (docker's way); the
            # ip-netns-exec child execs sleep in place, so its pid is the sleeper's
            assert netns.nsid_of_pid(ipr, pid_in_ns.pid) == nsid
            assert netns.nsid_of_pid(ipr, 2**22 + 1) == netns.NOT_ASSIGNED  # no such pid
        assert netns.named_netns_ids(Path("/run/netns"))[nsid] == ns.name
        assert netns.named_netns_ids(Path("/nonexistent")) == {}
    finally:
        pid_in_ns.kill()
        pid_in_ns.wait()
