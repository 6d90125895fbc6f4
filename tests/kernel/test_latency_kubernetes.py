"""Kubernetes mode: the real kube-apiserver becomes the latency target "apiserver" with no
[latency] configuration, and client connections to it are measured in the kernel.

etcd and kube-apiserver (tests/kube_cluster.py) run in the lab's private "host" namespace
on its loopback, where the kubernetes resolver reaches them too (loopback carries no
retinad program, so the resolver's own traffic is not measured). The apiserver advertises
the server namespace's address, so the ``default/kubernetes`` Endpoints the resolver
watches say 10.79.2.2:<port>; a plain TCP relay listening there (in the server namespace)
carries each connection to the apiserver untouched, TLS included. A client in the client
namespace then talks HTTPS to the API server across both attached veths.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from retinad.config.schema import (
    InterfaceSelection,
    KubernetesResolverSettings,
    LatencySettings,
    MetricsSettings,
    PacketParserSettings,
    ResolverSettings,
    Settings,
)
from retinad.kernel.compile import find_bpf_dir
from retinad.plugins.base import PluginContext
from retinad.plugins.packetparser import PacketParser
from retinad.resolvers import kubernetes as kube
from retinad.resolvers.base import ResolverChain, ResolverContext
from retinad.resolvers.follow import Backoff
from tests.kernel.latency_lab import HANDSHAKE, NO_RESPONSE, REQUEST, Lab, latency_lab, started
from tests.kernel.pp_helpers import inside, samples, value, wait_for
from tests.kube_cluster import KubeCluster, ensure_built

CONNECTIONS = 3
HTTPS_CLIENT = """
import json, socket, ssl, sys
host, port, cafile, token, n = sys.argv[1:6]
port, n = int(port), int(n)
ctx = ssl.create_default_context(cafile=cafile)
# TLS 1.2: three client flights per connection, each answered before the next is sent
# (ClientHello, key exchange + Finished, the HTTP request), so three request samples.
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
for _ in range(n):
    with socket.create_connection((host, port), timeout=10) as raw:
        s = ctx.wrap_socket(raw, server_hostname=host)
        s.sendall(("GET /version HTTP/1.1\\r\\nHost: %s\\r\\nAuthorization: Bearer %s\\r\\n"
                   "Connection: close\\r\\n\\r\\n" % (host, token)).encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
        json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])["gitVersion"]
        s.close()  # no close_notify from this side: Python's close() sends none
print("ok", flush=True)
"""


class Relay:
    """Accepts on (address, port) in ``ns`` and carries each connection byte for byte to
    127.0.0.1:port of the namespace this object was made in."""

    def __init__(self, lab: Lab, address: str, port: int) -> None:
        self.port = port
        self._sockets: list[socket.socket] = []
        self._pumps: list[threading.Thread] = []
        with inside(lab.server):
            self._listener = socket.create_server((address, port))
        self._thread = threading.Thread(target=self._accept, name="latency-relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(("127.0.0.1", self.port))
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                pump = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                self._pumps.append(pump)
                pump.start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for pump in self._pumps:
            pump.join(timeout=5)
        for s in self._sockets:
            s.close()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with latency_lab() as lab:
        yield lab


def resolver_for(cluster: KubeCluster) -> kube.KubernetesResolver:
    settings = Settings(
        resolvers=ResolverSettings(
            order=["kubernetes"],
            kubernetes=KubernetesResolverSettings(
                kubeconfig=str(cluster.kubeconfig_path), node_name="node-a", scope="node"
            ),
        )
    )
    ctx = ResolverContext(settings, logging.getLogger("retinad.test.kubernetes"), lambda: None)
    return kube.create(ctx, backoff=lambda: Backoff(0.05, 0.5))


def test_the_api_server_is_a_target_without_latency_config(lab: Lab, tmp_path: Path) -> None:
    binary = ensure_built()
    cluster = KubeCluster(
        tmp_path / "kube", apiserver_binary=binary, advertise_address=lab.server_ip
    )
    cluster.start()  # in the lab's host namespace (the fixture's thread is there)
    resolver = resolver_for(cluster)
    relay = Relay(lab, lab.server_ip, cluster.apiserver_port)
    plugin: PacketParser | None = None
    try:
        resolver.start()
        assert resolver.wait_up(30)
        expected = [(ipaddress.ip_address(lab.server_ip), cluster.apiserver_port)]
        wait_for(lambda: resolver.apiserver_addresses() == expected, timeout=30,
                 what="the apiserver's Endpoints")  # fmt: skip
        ctx = PluginContext(
            metrics=MetricsSettings(),
            resolver=ResolverChain([resolver]),
            bpf_dir=find_bpf_dir(),
            logger=logging.getLogger("retinad.packetparser"),
            latency=LatencySettings(),  # no targets configured
        )
        settings = PacketParserSettings(interfaces=InterfaceSelection(include=["rt-none"]))
        plugin = started(PacketParser(settings, ctx))
        out = lab.client.run(
            sys.executable, "-c", HTTPS_CLIENT, lab.server_ip, str(cluster.apiserver_port),
            str(cluster.ca_cert_path), cluster.token, str(CONNECTIONS),
        )  # fmt: skip
        assert out.stdout.decode().strip() == "ok"
        smp = samples(plugin.collect())
    finally:
        if plugin is not None:
            plugin.stop()
        relay.close()
        resolver.stop()
        cluster.stop()
    egress = {"target": "apiserver", "direction": "egress"}
    assert value(smp, HANDSHAKE + "_count", **egress) == CONNECTIONS
    assert value(smp, REQUEST + "_count", **egress) == 3 * CONNECTIONS
    assert value(smp, REQUEST + "_sum", **egress) > 0
    for metric in (HANDSHAKE, REQUEST):
        assert value(smp, metric + "_count", target="apiserver", direction="ingress") == 0
    for stage in ("handshake", "request"):
        assert value(smp, NO_RESPONSE, target="apiserver", stage=stage) == 0
    assert {labels for name, labels in smp if name == HANDSHAKE + "_count"} == {
        (("direction", "egress"), ("target", "apiserver")),
        (("direction", "ingress"), ("target", "apiserver")),
    }
