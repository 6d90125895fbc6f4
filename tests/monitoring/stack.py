"""A real retinad with steady traffic and drops made by the test, for the monitoring tests.

Two network namespaces (web and db) each sit behind a veth whose host side is one of
retinad's host interfaces. On a host interface the local endpoint is the host's address,
so the static resolver names the two host-side addresses shop/frontend and shop/batch and
the namespaces' addresses shop/web and shop/db (their peers in remote context): endpoint
labels are what an operator's would be. A sender in the root namespace runs until the
stack stops, 10 rounds a second:

* frontend -> web: 8 UDP datagrams to a sink on port 9, one TCP connection to a listener
  on 8080 (SYN, ACK, PSH, FIN) and one to closed port 81 (SYN answered by RST);
* batch -> db: 1 UDP datagram to its sink, 6 to port 5000 that an iptables rule in db
  drops (NETFILTER_DROP, ingress), one TCP connect to closed port 81;
* frontend -> a second address in web's namespace that no resolver names (``stray``):
  1 UDP datagram and one TCP connection to 8080, so unknown peers exist both ways
  (Retina's pod-level dashboard shows them by address);
* frontend -> web: one ICMP echo request (answered; packetparser counts both as unparsed,
  ``not_tcp_udp``);
* frontend -> web and stray: one SYN each to port 5001, which an iptables rule in web's
  namespace drops, so it is never answered (2 drops a round on web's side, against db's 6).

The listeners on 8080 answer each request, and web and stray are ``[[latency.targets]]``
(``web``, and ``apiserver``: the one name retina naming maps to Retina's
``adv_node_apiserver_*`` families), so every latency family has series: handshake and
request latency from the 8080 connections, ``no_response`` (stage handshake) from the
dropped SYNs, swept after ``timeout_seconds`` = 1. ``[packetparser.events]`` is on, with
its socket and flow log in the stack's workdir, for the flow-event panels.

So frontend leads batch on bytes and packets and db leads web on drops, each by 2x or
more: robust to a loaded machine.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.daemon_proc import DaemonProcess, NotifySocket, http_get
from tests.netns import Netns, VethLink, veth_to

SINK = """
import socket, threading
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 9))
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", 8080)); t.listen(64)
def tcp():
    while True:
        c, _ = t.accept()
        if c.recv(4096):
            c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\n")
        c.close()
threading.Thread(target=tcp, daemon=True).start()
while True:
    u.recv(65536)
"""

SENDER = """
import socket, struct, sys, time
web, db, stray = sys.argv[1], sys.argv[2], sys.argv[3]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
def echo_request(seq):
    # ICMP echo (type 8) with its checksum: the unparsed-packets panel's not_tcp_udp
    msg = struct.pack("!BBHHH", 8, 0, 0, 0x7274, seq & 0xFFFF) + b"retinad!"
    total = sum(struct.unpack("!8H", msg))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return msg[:2] + struct.pack("!H", ~total & 0xFFFF) + msg[4:]
def connect(ip, port, data):
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect((ip, port)); s.sendall(data)
        if data:
            s.recv(4096)  # read the answer, as a client does
    except OSError:
        pass
    s.close()
def syn(ip, port):
    # A SYN and nothing after it: closing a socket in SYN-SENT sends nothing more.
    s = socket.socket(); s.setblocking(False)
    s.connect_ex((ip, port))
    s.close()
seq = 0
while True:
    seq += 1
    icmp.sendto(echo_request(seq), (web, 0))
    for _ in range(8):
        u.sendto(b"w" * 100, (web, 9))
    u.sendto(b"d" * 100, (db, 9))
    for _ in range(6):
        u.sendto(b"x" * 100, (db, 5000))
    connect(web, 8080, b"GET / HTTP/1.0\\r\\n\\r\\n")
    connect(web, 81, b"")
    connect(db, 81, b"")
    u.sendto(b"s" * 100, (stray, 9))
    connect(stray, 8080, b"GET / HTTP/1.0\\r\\n\\r\\n")
    syn(web, 5001)
    syn(stray, 5001)
    time.sleep(0.1)
"""


@dataclass
class Stack:
    naming: str
    port: int
    daemon: DaemonProcess
    web: VethLink
    db: VethLink
    stray_ip: str
    """An address in web's namespace that no resolver names."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape(self) -> str:
        status, body = http_get(self.url)
        assert status == 200, body
        return body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(
    naming: str,
    port: int,
    web: VethLink,
    db: VethLink,
    stray: str,
    workdir: Path,
    extra: str = "",
    *,
    remote_context: bool = True,
) -> str:
    return f"""
[web]
listen_address = ["127.0.0.1:{port}"]
{extra}
[metrics]
mode = "advanced"
naming = "{naming}"
[packetparser]
container_interfaces = false
remote_context = {str(remote_context).lower()}
[packetparser.interfaces]
include = ["{web.host}", "{db.host}"]
[resolvers]
order = ["static", "host"]
[[resolvers.static.endpoints]]
cidr = "{web.host_ip}/32"
namespace = "shop"
name = "frontend"
workload_kind = "Deployment"
workload_name = "frontend"
[[resolvers.static.endpoints]]
cidr = "{db.host_ip}/32"
namespace = "shop"
name = "batch"
workload_kind = "CronJob"
workload_name = "batch"
[[resolvers.static.endpoints]]
cidr = "{web.peer_ip}/32"
namespace = "shop"
name = "web"
workload_kind = "Deployment"
workload_name = "web"
[[resolvers.static.endpoints]]
cidr = "{db.peer_ip}/32"
namespace = "shop"
name = "db"
workload_kind = "StatefulSet"
workload_name = "db"
[latency]
timeout_seconds = 1
[[latency.targets]]
name = "web"
address = "{web.peer_ip}"
[[latency.targets]]
name = "apiserver"
address = "{stray}"
[packetparser.events]
enabled = true
socket = "{workdir / "flows.sock"}"
[packetparser.events.log]
path = "{workdir / "flows.jsonl"}"
"""


@contextmanager
def running_stack(
    naming: str, workdir: Path, web_extra: str = "", *, remote_context: bool = True
) -> Iterator[Stack]:
    """retinad in ``naming`` with the traffic above flowing; everything removed after."""
    nets = [f"10.{100 + secrets.randbelow(150)}.{secrets.randbelow(256)}" for _ in "ab"]
    namespaces = [Netns(), Netns()]
    procs: list[subprocess.Popen[bytes]] = []
    daemon: DaemonProcess | None = None
    notify = NotifySocket(workdir / "notify.sock")
    try:
        web, db = (
            veth_to(ns, host_ip=f"{net}.1", peer_ip=f"{net}.2")
            for ns, net in zip(namespaces, nets, strict=True)
        )
        db.ns.run("iptables", "-A", "INPUT", "-p", "udp", "--dport", "5000", "-j", "DROP")
        web.ns.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "5001", "-j", "DROP")
        stray = web.peer_ip.rsplit(".", 1)[0] + ".3"
        web.ns.run("ip", "addr", "add", f"{stray}/24", "dev", web.peer)
        for link in (web, db):
            procs.append(link.ns.popen([sys.executable, "-c", SINK]))
        port = _free_port()
        cfg = workdir / "retinad.toml"
        cfg.write_text(
            config(naming, port, web, db, stray, workdir, web_extra, remote_context=remote_context)
        )
        daemon = DaemonProcess(
            ["--config.file", str(cfg)], workdir=workdir, env={"NOTIFY_SOCKET": str(notify.path)}
        )
        notify.wait_for("READY=1", timeout=180)
        sender = [sys.executable, "-c", SENDER, web.peer_ip, db.peer_ip, stray]
        procs.append(subprocess.Popen(sender))
        yield Stack(naming, port, daemon, web, db, stray)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        notify.close()
        if daemon is not None:
            rc = daemon.stop()
            if rc != 0:
                print(daemon.log, file=sys.stderr)
        for ns in namespaces:
            ns.close()  # takes the veths and the iptables rule with it
