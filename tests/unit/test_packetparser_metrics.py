"""packetparser_metrics on literal map records: labels, sums, namings, overflow, dedupe."""

from __future__ import annotations

import ctypes
import ipaddress

from retinad.config.schema import MetricsSettings
from retinad.exporter.ledger import SeriesLedger
from retinad.kernel import abi
from retinad.model import Endpoint
from retinad.plugins.packetparser_metrics import (
    Reading,
    basic_families,
    endpoint_overflow,
    endpoint_records,
    overflow_packets,
    remote_overflow,
    remote_records,
)
from retinad.plugins.packetparser_metrics import (
    endpoint_families as _endpoint_families,
)
from retinad.plugins.packetparser_metrics import (
    remote_families as _remote_families,
)
from retinad.resolvers.base import IPAddress, ResolverChain

WEB = Endpoint(namespace="shop", name="web-1", workload_kind="container", workload_name="web")
HOST = Endpoint(namespace="", name="node", workload_kind="host", workload_name="node")


class Tables:
    """A resolver over fixed tables."""

    name = "tables"

    def __init__(self, ips: dict[str, Endpoint], ifindexes: dict[int, Endpoint]) -> None:
        self.ips = {ipaddress.ip_address(k): v for k, v in ips.items()}
        self.ifindexes = ifindexes

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def by_ip(self, ip: IPAddress) -> Endpoint | None:
        return self.ips.get(ip)

    def by_ifindex(self, ifindex: int) -> Endpoint | None:
        return self.ifindexes.get(ifindex)


def endpoint_families(r: Reading, res: Tables, m: MetricsSettings) -> list:  # type: ignore[type-arg]
    """One scrape as the plugin does it: name the keys, pass them through a ledger."""
    ledger = SeriesLedger(width=10, grace=300, cap=100, overflow=endpoint_overflow(m),
                          take=lambda k: None)  # fmt: skip
    return _endpoint_families(ledger.update(endpoint_records(r, ResolverChain([res]), m)), m)


def remote_families(r: Reading, res: Tables, m: MetricsSettings) -> list:  # type: ignore[type-arg]
    ledger = SeriesLedger(width=10, grace=300, cap=100, overflow=remote_overflow(m),
                          take=lambda k: None)  # fmt: skip
    return _remote_families(ledger.update(remote_records(r, ResolverChain([res]), m)), m)


def tv(packets: int, nbytes: int, **flags: int) -> abi.TrafficValue:
    v = abi.TrafficValue(packets=packets, bytes=nbytes)
    for name, n in flags.items():
        v.tcp_flags[abi.TCP_FLAG_NAMES.index(name)] = n
    return v


def addr16(ip: str) -> bytes:
    a = ipaddress.ip_address(ip)
    return (b"\0" * 10 + b"\xff\xff" + a.packed) if a.version == 4 else a.packed


def ek(ip: str, ifindex: int, direction: int) -> abi.EndpointKey:
    fam = abi.FAMILY_IPV4 if "." in ip else abi.FAMILY_IPV6
    k = abi.EndpointKey(ifindex=ifindex, direction=direction, family=fam)
    ctypes.memmove(k.addr, addr16(ip), 16)
    return k


def overflow_ek(direction: int) -> abi.EndpointKey:
    return abi.EndpointKey(direction=direction, family=abi.FAMILY_OVERFLOW)


def flat(fams: list) -> dict:  # type: ignore[type-arg]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams for s in f.samples}


def labels(direction: str, ep: Endpoint, **extra: str) -> tuple[tuple[str, str], ...]:
    d = {"direction": direction, "namespace": ep.namespace, "name": ep.name,
         "workload_kind": ep.workload_kind, "workload_name": ep.workload_name, **extra}  # fmt: skip
    return tuple(sorted(d.items()))


def test_basic_sums_interfaces_by_direction_and_always_has_both() -> None:
    r = Reading(iface=[
        (abi.IfaceKey(ifindex=2, direction=1), tv(3, 300, SYN=1)),
        (abi.IfaceKey(ifindex=3, direction=1), tv(4, 400, SYN=2, ACK=4)),
        (abi.IfaceKey(ifindex=0, direction=1), tv(1, 100)),  # overflow key: still counted
    ])  # fmt: skip
    s = flat(basic_families(r, MetricsSettings()))
    assert s[("retinad_forward_packets_total", (("direction", "ingress"),))] == 8
    assert s[("retinad_forward_bytes_total", (("direction", "ingress"),))] == 800
    assert s[("retinad_forward_packets_total", (("direction", "egress"),))] == 0
    flag = (("direction", "ingress"), ("flag", "SYN"))
    assert s[("retinad_tcp_flags_total", flag)] == 3
    assert len([k for k in s if k[0] == "retinad_tcp_flags_total"]) == 16


def test_basic_in_retina_naming() -> None:
    r = Reading(iface=[(abi.IfaceKey(ifindex=2, direction=2), tv(5, 500, ACK=5))])
    s = flat(basic_families(r, MetricsSettings(naming="retina")))
    assert s[("networkobservability_forward_count", (("direction", "egress"),))] == 5
    assert s[("networkobservability_forward_bytes", (("direction", "egress"),))] == 500
    key = ("networkobservability_tcp_flag_gauges", (("direction", "egress"), ("flag", "ACK")))
    assert s[key] == 5


def test_endpoints_by_ifindex_on_container_veths_then_by_ip_then_unknown() -> None:
    res = Tables({"192.0.2.1": HOST}, {7: WEB})
    r = Reading(
        iface=[],
        endpoint=[
            (ek("10.0.0.5", 7, 2), tv(10, 1000, SYN=1)),  # container veth: by_ifindex
            (ek("fd00::5", 7, 2), tv(2, 200)),  # same container, IPv6: summed
            (ek("192.0.2.1", 2, 1), tv(3, 300)),  # host interface: by_ip
            (ek("198.51.100.9", 2, 1), tv(4, 400)),  # nobody knows it
            (overflow_ek(1), tv(6, 600)),
            (overflow_ek(2), tv(0, 0)),
        ],
        container_ifindexes=frozenset({7}),
    )
    s = flat(endpoint_families(r, res, MetricsSettings()))
    p = "retinad_endpoint_forward_packets_total"
    assert s[(p, labels("egress", WEB))] == 12
    assert s[("retinad_endpoint_forward_bytes_total", labels("egress", WEB))] == 1200
    assert s[(p, labels("ingress", HOST))] == 3
    unknown = Endpoint("", "unknown", "unknown", "unknown")
    assert s[(p, labels("ingress", unknown))] == 4
    over = Endpoint("", "overflow", "overflow", "overflow")
    assert s[(p, labels("ingress", over))] == 6
    flag_key = ("retinad_endpoint_tcp_flags_total", (("flag", "SYN"), *labels("egress", WEB)))
    assert s[(flag_key[0], tuple(sorted(flag_key[1])))] == 1
    # Flag series exist only for flags seen.
    assert not [k for k in s if k[0] == "retinad_endpoint_tcp_flags_total" and "ACK" in str(k)]


def test_ip_label_and_retina_label_names() -> None:
    res = Tables({}, {7: WEB})
    r = Reading(iface=[], endpoint=[(ek("10.0.0.5", 7, 1), tv(1, 90))],
                container_ifindexes=frozenset({7}))  # fmt: skip
    s = flat(endpoint_families(r, res, MetricsSettings(naming="retina", ip_label=True)))
    want = {"direction": "ingress", "ip": "10.0.0.5", "namespace": "shop", "podname": "web-1",
            "workload_kind": "container", "workload_name": "web"}  # fmt: skip
    assert s[("networkobservability_adv_forward_count", tuple(sorted(want.items())))] == 1
    assert s[("networkobservability_adv_forward_bytes", tuple(sorted(want.items())))] == 90


def test_routed_container_traffic_counts_once() -> None:
    """The same packets on the container veth (7) and on the host interface (2)."""
    res = Tables({}, {7: WEB})
    r = Reading(
        iface=[],
        endpoint=[(ek("10.0.0.5", 7, 2), tv(9, 900)), (ek("10.0.0.5", 2, 2), tv(9, 900))],
        container_ifindexes=frozenset({7}),
    )
    s = flat(endpoint_families(r, res, MetricsSettings()))
    assert s == {
        ("retinad_endpoint_forward_packets_total", labels("egress", WEB)): 9,
        ("retinad_endpoint_forward_bytes_total", labels("egress", WEB)): 900,
    }


def test_remote_context_and_overflow_counter() -> None:
    res = Tables({"192.0.2.1": HOST}, {7: WEB})
    rk = abi.RemoteKey(ifindex=7, direction=2, family=abi.FAMILY_IPV4)
    ctypes.memmove(rk.local, addr16("10.0.0.5"), 16)
    ctypes.memmove(rk.remote, addr16("192.0.2.1"), 16)
    over = abi.RemoteKey(direction=2, family=abi.FAMILY_OVERFLOW)
    r = Reading(iface=[], remote=[(rk, tv(4, 40)), (over, tv(2, 20))],
                container_ifindexes=frozenset({7}))  # fmt: skip
    s = flat(remote_families(r, res, MetricsSettings()))
    want = dict(labels("egress", WEB))
    want.update({"remote_namespace": "", "remote_name": "node", "remote_workload_kind": "host",
                 "remote_workload_name": "node"})  # fmt: skip
    assert s[("retinad_endpoint_remote_forward_packets_total", tuple(sorted(want.items())))] == 4
    fam = overflow_packets([("packetparser_remote", r.remote)])
    assert [(x.labels, x.value) for x in fam.samples if x.name.endswith("_total")] == [
        ({"map": "packetparser_remote"}, 2)
    ]


class KernelMap:
    """The kernel map's semantics the ledger relies on: keys count until taken (lookup and
    delete), a packet to a taken key recreates it from zero."""

    def __init__(self) -> None:
        self.keys: dict[bytes, list[int]] = {}

    def count(self, key: abi.EndpointKey | abi.RemoteKey, n: int) -> None:
        slot = self.keys.setdefault(bytes(key), [0, 0])
        slot[0] += n
        slot[1] += n * 100

    def take(self, key: bytes) -> tuple[int, ...] | None:
        v = self.keys.pop(key, None)
        return None if v is None else (v[0], v[1], *([0] * abi.TCP_NFLAGS))

    def records(self, key_type: type[ctypes.Structure]) -> list:  # type: ignore[type-arg]
        return [(key_type.from_buffer_copy(k), tv(v[0], v[1])) for k, v in self.keys.items()]


def test_counted_once_over_six_scrapes_with_an_owner_change_in_the_middle() -> None:
    """Routed container traffic is in a veth key and a host-interface key (endpoint and
    remote maps). Owner A leaves (its veth 7 goes away), B gets the IP behind veth 9."""
    m = MetricsSettings()
    a = Endpoint(namespace="shop", name="a", workload_kind="container", workload_name="a")
    b = Endpoint(namespace="shop", name="b", workload_kind="container", workload_name="b")
    world = Endpoint(namespace="", name="world", workload_kind="host", workload_name="w")
    res = Tables({"192.0.2.9": world}, {7: a})
    chain = ResolverChain([res])
    ep_map, rm_map = KernelMap(), KernelMap()
    ep_ledger = SeriesLedger(width=10, grace=300, cap=1000, overflow=endpoint_overflow(m),
                             take=ep_map.take)  # fmt: skip
    rm_ledger = SeriesLedger(width=10, grace=300, cap=1000, overflow=remote_overflow(m),
                             take=rm_map.take)  # fmt: skip
    containers = frozenset({7, 9})

    def send(veth: int, n: int) -> None:  # one routed packet: veth ingress, eth0 (2) egress
        for idx in (veth, 2):
            ep_map.count(ek("10.0.0.5", idx, 2), n)
            rk = abi.RemoteKey(ifindex=idx, direction=2, family=abi.FAMILY_IPV4)
            ctypes.memmove(rk.local, addr16("10.0.0.5"), 16)
            ctypes.memmove(rk.remote, addr16("192.0.2.9"), 16)
            rm_map.count(rk, n)

    def scrape() -> tuple[dict, dict]:  # type: ignore[type-arg]
        r = Reading(
            iface=[],
            endpoint=ep_map.records(abi.EndpointKey),
            remote=rm_map.records(abi.RemoteKey),
            container_ifindexes=containers,
        )
        ep = flat(_endpoint_families(ep_ledger.update(endpoint_records(r, chain, m)), m))
        rm = flat(_remote_families(rm_ledger.update(remote_records(r, chain, m)), m))
        return ep, rm

    def pk(owner: Endpoint) -> tuple:  # type: ignore[type-arg]
        return ("retinad_endpoint_forward_packets_total", labels("egress", owner))

    def rpk(owner: Endpoint) -> int:
        want = "retinad_endpoint_remote_forward_packets_total"
        return sum(v for (n, ls), v in scrape()[1].items() if n == want and
                   ("name", owner.name) in ls)  # fmt: skip

    send(7, 5)
    ep, _ = scrape()  # 1
    assert ep[pk(a)] == 5 and pk(b) not in ep
    assert rpk(a) == 5  # 2: remote series are not doubled either
    # A is deleted; its veth 7 is gone; B gets the IP behind veth 9 (no packet yet).
    res.ifindexes = {9: b}
    res.ips[ipaddress.ip_address("10.0.0.5")] = b
    ep, _ = scrape()  # 3: A's key is taken with its final count
    assert ep[pk(a)] == 5 and ep.get(pk(b), 0) == 0
    ep, _ = scrape()  # 4: the host-interface key does not come back with A's history
    assert ep[pk(a)] == 5 and ep.get(pk(b), 0) == 0
    send(9, 3)
    ep, _ = scrape()  # 5
    assert (ep[pk(a)], ep[pk(b)]) == (5, 3)
    send(9, 4)
    ep, _ = scrape()  # 6
    assert (ep[pk(a)], ep[pk(b)]) == (5, 7)
    assert (rpk(a), rpk(b)) == (5, 7)  # 7


def pair(direction: str, src: tuple[str, ...], dst: tuple[str, ...], **extra: str) -> tuple:  # type: ignore[type-arg]
    names = ("ip", "namespace", "podname", "workload_kind", "workload_name")
    d = {"direction": direction, **extra}
    d |= {f"source_{n}": v for n, v in zip(names, src, strict=True)}
    d |= {f"destination_{n}": v for n, v in zip(names, dst, strict=True)}
    return tuple(sorted(d.items()))


def test_retina_remote_context_is_retinas_own_shape() -> None:
    """Retina naming, remote context: adv_forward_count/bytes/tcpflags carry source_* and
    destination_* (the local endpoint is the source of egress, the destination of ingress),
    an unknown peer is "unknown" but for its address, and the cap's overflow keeps the shape."""
    res = Tables({"192.0.2.1": HOST}, {7: WEB})
    out = abi.RemoteKey(ifindex=7, direction=abi.DIR_EGRESS, family=abi.FAMILY_IPV4)
    ctypes.memmove(out.local, addr16("10.0.0.5"), 16)
    ctypes.memmove(out.remote, addr16("192.0.2.1"), 16)
    into = abi.RemoteKey(ifindex=7, direction=abi.DIR_INGRESS, family=abi.FAMILY_IPV4)
    ctypes.memmove(into.local, addr16("10.0.0.5"), 16)
    ctypes.memmove(into.remote, addr16("198.51.100.9"), 16)
    r = Reading(iface=[], remote=[(out, tv(4, 400, SYN=1)), (into, tv(3, 300))],
                container_ifindexes=frozenset({7}))  # fmt: skip
    web = ("10.0.0.5", "shop", "web-1", "container", "web")
    host = ("192.0.2.1", "", "node", "host", "node")
    unknown = ("198.51.100.9", "unknown", "unknown", "unknown", "unknown")
    s = flat(remote_families(r, res, MetricsSettings(naming="retina")))
    assert s == {
        ("networkobservability_adv_forward_count", pair("egress", web, host)): 4,
        ("networkobservability_adv_forward_bytes", pair("egress", web, host)): 400,
        ("networkobservability_adv_tcpflags_count", pair("egress", web, host, flag="SYN")): 1,
        ("networkobservability_adv_forward_count", pair("ingress", unknown, web)): 3,
        ("networkobservability_adv_forward_bytes", pair("ingress", unknown, web)): 300,
    }
    # A cap of one label set (2 + 8 flag series each): the second pair goes to overflow.
    m = MetricsSettings(naming="retina")
    ledger = SeriesLedger(width=10, grace=300, cap=10, overflow=remote_overflow(m),
                          take=lambda k: None, series_per_labels=2 + abi.TCP_NFLAGS)  # fmt: skip
    capped = flat(_remote_families(ledger.update(remote_records(r, ResolverChain([res]), m)), m))
    over = ("unknown", "", "overflow", "overflow", "overflow")
    assert capped[("networkobservability_adv_forward_count", pair("ingress", over, over))] == 3
    assert ledger.dropped == 1
