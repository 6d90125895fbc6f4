"""Flow events end to end: the real plugin on real veths, real traffic, the real flow log.

Each test runs packetparser with [packetparser.events] on inside a private namespace
(see test_packetparser_veth.py), sends a scripted exchange, stops the plugin (which
detaches, flushes the connection table and writes every queued record) and reads the
JSON-lines log back: counts are exact, over both transports.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from retinad.config.schema import EventLogSettings, EventSettings, PacketParserSettings
from retinad.plugins.packetparser import PacketParser
from retinad.resolvers.host import HostResolver
from tests.kernel import test_packetparser_veth as veth
from tests.kernel.pp_helpers import ifindex, make_plugin, samples, send_udp, value, wait_for
from tests.kernel.test_packetparser_veth import NO_HOST, PKTS, TCP_CLIENT, Containers

# the fixtures: a private "host" namespace (tests/conftest.py), its containers, its resolver
containers = veth.containers
resolver = veth.resolver

TRANSPORTS = ["ringbuf", "perf"]


def settings(log: Path, **events: Any) -> PacketParserSettings:
    events.setdefault("socket", "")
    ev = EventSettings(enabled=True, log=EventLogSettings(path=str(log)), **events)
    return PacketParserSettings(interfaces=NO_HOST, container_interfaces=True, events=ev)


def records(log: Path) -> list[dict[str, Any]]:
    files = sorted(log.parent.glob(log.name + "*"), key=lambda p: -_generation(p, log))
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def _generation(p: Path, log: Path) -> int:
    return 0 if p == log else int(p.name.rsplit(".", 1)[1])


def started(pp: PacketParser, c: Any) -> None:
    pp.start()
    wait_for(lambda: ifindex(c.host) in pp.attached(), what="veth attached")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_low_aggregation_logs_every_packet_with_names_and_interface(
    containers: Containers, resolver: HostResolver, tmp_path: Path, transport: str
) -> None:
    c = containers.add(41)
    log = tmp_path / "flows.json"
    pp = make_plugin(settings(log, transport=transport, aggregation_level="low"),
                     resolver=resolver)  # fmt: skip
    started(pp, c)
    try:
        send_udp(c.ns, c.host_ip, 23, 100)  # container -> host: the container's egress
        send_udp(None, c.peer_ip, 17, 100)  # host -> container: its ingress
        out = {"direction": "egress", "namespace": "", "name": c.ns.name,
               "workload_kind": "interface", "workload_name": c.host}  # fmt: skip
        wait_for(lambda: value(samples(pp.collect()), PKTS, **out) == 23, what="23 counted")
        events = pp.flow_events()
        assert events is not None
        wait_for(lambda: events.records_written == 40, what="40 records")
        s = samples(pp.collect())
        assert value(s, "retinad_events_total", transport=transport) == 40
        assert value(s, "retinad_events_lost_total", stage="kernel") == 0
        assert value(s, "retinad_events_lost_total", stage="queue") == 0
    finally:
        pp.stop()
    recs = records(log)
    assert len(recs) == 40
    egress = [r for r in recs if r["direction"] == "egress"]
    ingress = [r for r in recs if r["direction"] == "ingress"]
    assert len(egress) == 23 and len(ingress) == 17
    r = egress[0]
    assert (r["src_ip"], r["dst_ip"], r["dst_port"], r["protocol"]) == (
        c.peer_ip, c.host_ip, 9999, "UDP",
    )  # fmt: skip
    assert r["interface"] == {"name": c.host, "ifindex": ifindex(c.host), "role": "container"}
    assert r["src"]["name"] == c.ns.name  # the container, named by its veth
    assert r["dst"]["name"] == "testhost"  # the host, named by its address
    assert {(x["packets"], x["bytes"], x["reason"]) for x in recs} == {(1, 142, "packet")}
    assert ingress[0]["dst"]["name"] == c.ns.name


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_high_aggregation_records_add_up_to_each_connections_totals(
    containers: Containers, resolver: HostResolver, tmp_path: Path, transport: str
) -> None:
    c = containers.add(42)
    log = tmp_path / "flows.json"
    pp = make_plugin(settings(log, transport=transport, aggregation_level="high",
                              report_interval_seconds=1), resolver=resolver)  # fmt: skip
    started(pp, c)
    try:
        got: list[int] = []

        def serve() -> None:
            srv = socket.socket()
            srv.bind((c.host_ip, 0))
            srv.listen(1)
            got.append(srv.getsockname()[1])
            conn, _ = srv.accept()
            while conn.recv(65536):
                pass
            conn.sendall(b"bye")
            conn.close()
            srv.close()

        t = threading.Thread(target=serve)
        t.start()
        wait_for(lambda: got, what="server port")
        client = TCP_CLIENT.replace('assert s.recv(100) == b""', "s.recv(100)")
        c.ns.run("python3", "-c", client, c.host_ip, str(got[0]))
        t.join()
        out = {"direction": "egress", "namespace": "", "name": c.ns.name,
               "workload_kind": "interface", "workload_name": c.host}  # fmt: skip
        inn = dict(out, direction="ingress")

        def settled() -> tuple[float, float] | None:
            s = samples(pp.collect())
            sent, recv = value(s, PKTS, **out), value(s, PKTS, **inn)
            return (sent, recv) if sent >= 5 and recv >= 4 else None

        wait_for(settled, what="the exchange counted")
        # Both ends have closed; the last ACK may still be on its way: take the counters
        # once two reads agree.
        last: list[tuple[float, float]] = []

        def stable() -> tuple[float, float] | None:
            s = samples(pp.collect())
            now = (value(s, PKTS, **out), value(s, PKTS, **inn))
            prev = last[-1] if last else None
            last.append(now)
            return now if prev == now else None

        sent, recv = wait_for(stable, what="stable counts")
        s = samples(pp.collect())  # table fullness, like every other map
        conn = {"map": "flow_events_connections"}
        assert value(s, "retinad_map_capacity", **conn) == 65536
        # entries: the idle sweep (1 s here) may already have taken the flows out
        assert ("retinad_map_entries", (("map", "flow_events_connections"),)) in s
    finally:
        pp.stop()
    recs = [r for r in records(log) if r["protocol"] == "TCP"]
    by_dir = {d: [r for r in recs if r["direction"] == d] for d in ("egress", "ingress")}
    assert sum(r["packets"] for r in by_dir["egress"]) == sent
    assert sum(r["packets"] for r in by_dir["ingress"]) == recv
    first = by_dir["egress"][0]
    assert (first["reason"], first["tcp_flags"], first["packets"]) == ("new", ["SYN"], 1)
    assert first["dst_port"] == got[0]
    assert {r["first_seen"] for r in by_dir["egress"]} == {first["first_seen"]}
    assert any("FIN" in r["tcp_flags"] for r in by_dir["egress"])
    assert len(by_dir["egress"]) < sent  # aggregated: fewer records than packets


def test_flow_log_rotates_at_its_size_and_loses_no_record(
    containers: Containers, resolver: HostResolver, tmp_path: Path
) -> None:
    c = containers.add(43)
    log = tmp_path / "flows.json"
    small = EventLogSettings(path=str(log), max_size_mib=1, max_files=20)
    ev = EventSettings(enabled=True, aggregation_level="low", log=small, socket="")
    pp = make_plugin(PacketParserSettings(interfaces=NO_HOST, events=ev), resolver=resolver)
    started(pp, c)
    n = 6000
    try:
        send_udp(c.ns, c.host_ip, n, 100)
        events = pp.flow_events()
        assert events is not None
        wait_for(lambda: events.records_written == n, timeout=60, what=f"{n} records")
    finally:
        pp.stop()
    files = sorted(tmp_path.glob("flows.json*"))
    assert len(files) >= 3, files  # ~500 bytes a record: 3 MB in 1 MiB files
    for f in files:
        assert f.stat().st_size <= 1024 * 1024
        assert f.read_bytes().endswith(b"\n")
    recs = records(log)
    assert len(recs) == n
    assert all(r["packets"] == 1 and r["direction"] == "egress" for r in recs)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_tiny_ring_loses_events_counted_exactly_and_metrics_stay_exact(
    containers: Containers, resolver: HostResolver, tmp_path: Path, transport: str
) -> None:
    c = containers.add(44)
    log = tmp_path / "flows.json"
    # One page and a drain once a second: a 3000-packet burst cannot fit.
    pp = make_plugin(settings(log, transport=transport, aggregation_level="low", ring_pages=1,
                              perf_pages=1, drain_interval_ms=1000,
                              wakeup_events=1_000_000), resolver=resolver)  # fmt: skip
    started(pp, c)
    n = 3000
    out = {"direction": "egress", "namespace": "", "name": c.ns.name,
           "workload_kind": "interface", "workload_name": c.host}  # fmt: skip
    try:
        send_udp(c.ns, c.host_ip, n, 100)
        wait_for(lambda: value(samples(pp.collect()), PKTS, **out) == n, what="n counted")
        events = pp.flow_events()
        assert events is not None

        def accounted() -> bool:
            s = samples(pp.collect())
            got = value(s, "retinad_events_total", transport=transport)
            lost = value(s, "retinad_events_lost_total", stage="kernel")
            return got + lost == n

        wait_for(accounted, timeout=15, what="every event read or counted lost")
        s = samples(pp.collect())
        lost = value(s, "retinad_events_lost_total", stage="kernel")
        assert lost > 0
        assert value(s, PKTS, **out) == n  # the metric is exact whatever the ring did
        assert pp.healthy()
    finally:
        pp.stop()
    assert len(records(log)) == n - lost


def test_a_full_queue_loses_events_counted_at_stage_queue(
    containers: Containers, resolver: HostResolver, tmp_path: Path
) -> None:
    c = containers.add(45)
    log = tmp_path / "flows.json"
    # A drain once a second hands the whole burst over at once; 16 fit in the queue.
    pp = make_plugin(settings(log, aggregation_level="low", queue_size=16, drain_interval_ms=1000,
                              wakeup_events=1_000_000), resolver=resolver)  # fmt: skip
    started(pp, c)
    n = 2000
    try:
        send_udp(c.ns, c.host_ip, n, 100)
        events = pp.flow_events()
        assert events is not None

        def accounted() -> bool:
            s = samples(pp.collect())
            return value(s, "retinad_events_total", transport=events.transport) == n

        wait_for(accounted, timeout=15, what="every event read")
        wait_for(lambda: events.records_written + events.queue_lost == n, what="all accounted")
        s = samples(pp.collect())
        assert value(s, "retinad_events_lost_total", stage="kernel") == 0
        assert value(s, "retinad_events_lost_total", stage="queue") == events.queue_lost > 0
    finally:
        pp.stop()
    assert len(records(log)) == n - events.queue_lost


def test_reload_switches_the_flow_log_without_recompiling(
    containers: Containers, resolver: HostResolver, tmp_path: Path
) -> None:
    c = containers.add(46)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    s1 = settings(first, aggregation_level="low")
    pp = make_plugin(s1, resolver=resolver)
    started(pp, c)
    try:
        events = pp.flow_events()
        assert events is not None
        send_udp(c.ns, c.host_ip, 3, 100)
        wait_for(lambda: events.records_written == 3, what="3 records")
        s2 = dataclasses.replace(s1, events=dataclasses.replace(
            s1.events, log=EventLogSettings(path=str(second))))  # fmt: skip
        pp.reload(s2, pp.ctx.metrics)
        assert pp.flow_events() is events  # same programs, same reader
        send_udp(c.ns, c.host_ip, 4, 100)
        wait_for(lambda: events.records_written == 7, what="4 more records")
    finally:
        pp.stop()
    assert len(records(first)) == 3
    assert len(records(second)) == 4
