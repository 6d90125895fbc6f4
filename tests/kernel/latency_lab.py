"""The namespaces, servers and packet holder of the latency tests (tests/kernel/test_latency*.py).

A private "host" namespace routes between a client namespace and a server namespace, both
attached as containers. The server namespace can hold its SYN-ACKs for a known time with
an iptables NFQUEUE rule and a user-space holder (fnfqueue); its server answers requests
after a known delay.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from retinad.plugins.packetparser import PacketParser
from tests.kernel.pp_helpers import Samples, inside, value, wait_for
from tests.netns import Netns, sh, veth_to

HANDSHAKE = "retinad_handshake_latency_seconds"
REQUEST = "retinad_request_latency_seconds"
NO_RESPONSE = "retinad_no_response_total"
EDGES = ("0.0001", "0.0002", "0.0003", "0.0005", "0.001", "0.002", "0.003", "0.005",
         "0.01", "0.02", "0.03", "0.05", "0.1", "0.2", "0.3", "0.5", "1", "2", "3", "5",
         "10", "+Inf")  # fmt: skip

SERVER = """
import os, socket, sys, threading, time
try:  # answer on time even on a loaded machine: the delay is what the test asserts
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
except OSError:
    pass
def serve(sock, delay):
    while True:
        c, _ = sock.accept()
        threading.Thread(target=talk, args=(c, delay), daemon=True).start()
def talk(c, delay):
    while True:
        data = c.recv(4096)
        if not data:
            c.close()
            return
        time.sleep(delay)
        c.sendall(b"answer:" + data)
ports = []
for delay in sys.argv[1:]:  # IPv4 and IPv6 on one port
    s = socket.create_server(("::", 0), family=socket.AF_INET6, backlog=16, dualstack_ipv6=True)
    ports.append(s.getsockname()[1])
    threading.Thread(target=serve, args=(s, float(delay)), daemon=True).start()
print(" ".join(map(str, ports)), flush=True)
threading.Event().wait()
"""

HOLDER = """
import os, sys, time, fnfqueue
queue, delay = int(sys.argv[1]), float(sys.argv[2])
try:  # wake up on time even on a loaded machine: the hold is what the test asserts
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
except OSError:
    pass
conn = fnfqueue.Connection()
q = conn.bind(queue)
q.set_mode(fnfqueue.MAX_PAYLOAD, fnfqueue.COPY_META)
print("ready", flush=True)
for packet in conn:
    time.sleep(delay)
    packet.accept()
"""

CLIENT = """
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
requests = sys.argv[4:]
try:
    s = socket.create_connection((host, port), timeout=timeout)
except OSError as err:
    print("failed", err, flush=True)
    sys.exit(0)
for r in requests:
    s.sendall(r.encode())
    assert s.recv(4096) == b"answer:" + r.encode()
s.close()
print("ok", flush=True)
"""


@dataclass
class Lab:
    host: Netns
    client: Netns
    server: Netns
    server_ip: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, ns: Netns, script: str, *args: str) -> str:
        """Run a Python script in ``ns``; return its first output line (its readiness)."""
        p = ns.popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE)
        self.procs.append(p)
        assert p.stdout is not None
        return p.stdout.readline().decode().strip()

    def connect(self, port: int, *requests: str, timeout: float = 5.0) -> str:
        out = self.client.run(
            sys.executable, "-c", CLIENT, self.server_ip, str(port), str(timeout), *requests
        )
        return out.stdout.decode().strip()

    def hold_synacks(self, port: int, queue: int, delay: float) -> None:
        """Hold every SYN-ACK the server sends from ``port`` for ``delay`` seconds."""
        assert self.start(self.server, HOLDER, str(queue), str(delay)) == "ready"
        self.server.run("iptables", "-A", "OUTPUT", "-p", "tcp", "--sport", str(port),
                        "--tcp-flags", "SYN,ACK", "SYN,ACK",
                        "-j", "NFQUEUE", "--queue-num", str(queue))  # fmt: skip

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
            if p.stdout is not None:
                p.stdout.close()


@contextmanager
def latency_lab() -> Iterator[Lab]:
    """A private "host" namespace (the calling thread runs in it until the end) routing
    between a client (10.79.1.2, fd79:1::2) and a server (10.79.2.2, fd79:2::2)
    namespace, each behind a veth the plugin attaches to as a container's."""
    host = Netns()
    made = [host]
    try:
        with inside(host):
            sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            sh("sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
            client, server = Netns(), Netns()
            made += [client, server]
            veth_to(client, host_ip="10.79.1.1", peer_ip="10.79.1.2",
                    host_ip6="fd79:1::1", peer_ip6="fd79:1::2")  # fmt: skip
            veth_to(server, host_ip="10.79.2.1", peer_ip="10.79.2.2",
                    host_ip6="fd79:2::1", peer_ip6="fd79:2::2")  # fmt: skip
            for ns, gw, gw6 in ((client, "10.79.1.1", "fd79:1::1"),
                                (server, "10.79.2.1", "fd79:2::1")):  # fmt: skip
                ns.run("ip", "route", "add", "default", "via", gw)
                ns.run("ip", "-6", "route", "add", "default", "via", gw6)
            lab = Lab(host, client, server, "10.79.2.2")
            try:
                yield lab
            finally:
                lab.close()
    finally:
        for ns in reversed(made):
            ns.close()


def started(plugin: PacketParser) -> PacketParser:
    """Start the plugin and wait until both container veths carry its programs."""
    plugin.start()
    wait_for(lambda: len(plugin.attached()) == 2, what="both veths attached")
    return plugin


def buckets(smp: Samples, metric: str, **labels: str) -> dict[str, float]:
    return {le: value(smp, metric + "_bucket", le=le, **labels) for le in EDGES}


def expect(n: int, above: str) -> dict[str, float]:
    """Cumulative counts of ``n`` samples all in the bucket whose lower bound is ``above``."""
    i = EDGES.index(above)
    return {le: (0.0 if j <= i else float(n)) for j, le in enumerate(EDGES)}


def series_of(smp: Samples, metric: str) -> set[tuple[tuple[str, str], ...]]:
    return {
        tuple(kv for kv in labels if kv[0] != "le")
        for (name, labels) in smp
        if name.startswith(metric)
    }
