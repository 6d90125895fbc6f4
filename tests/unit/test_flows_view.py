"""`retinad flows` filters and its one-line form, on records of the documented schema."""

from __future__ import annotations

from typing import Any

from retinad.flows.view import Filter, line


def record(**over: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "version": 1, "time": "2026-12-01T12:00:00.000001Z", "direction": "egress",
        "protocol": "TCP", "interface": {"name": "veth1", "ifindex": 7, "role": "container"},
        "src_ip": "172.17.0.2", "src_port": 40000, "dst_ip": "fd00::3", "dst_port": 80,
        "src": {"name": "web", "namespace": "shop", "workload_kind": "compose_service",
                "workload_name": "web"},
        "dst": None, "tcp_flags": ["SYN"], "packets": 1, "bytes": 74, "reason": "new",
    }  # fmt: skip
    r.update(over)
    return r


def test_every_criterion_must_hold_and_endpoint_criteria_match_either_end() -> None:
    r = record()
    assert Filter()(r)
    assert Filter(names=("web",))(r) and Filter(names=("shop/*",))(r)
    assert not Filter(names=("db",))(r)
    assert Filter(ips=("fd00::3",))(r) and not Filter(ips=("10.0.0.1",))(r)
    assert Filter(ports=(80,))(r) and Filter(ports=(40000,))(r) and not Filter(ports=(53,))(r)
    assert Filter(protocol="tcp")(r) and not Filter(protocol="udp")(r)
    assert Filter(direction="egress")(r) and not Filter(direction="ingress")(r)
    assert Filter(interface="veth*")(r) and not Filter(interface="eth*")(r)
    assert not Filter(names=("web",), protocol="udp")(r)


def test_line_names_the_ends_it_knows_and_brackets_ipv6() -> None:
    assert line(record()) == (
        "2026-12-01T12:00:00.000001Z veth1 egress TCP shop/web (172.17.0.2:40000) -> "
        "[fd00::3]:80 [SYN] 1 pkt 74 B new"
    )
