"""The default scenario, on each instance: installed, running, serving, counting."""

from __future__ import annotations

import re
import time

import pytest

METRICS = "http://127.0.0.1:10095/metrics"


def scrape(host) -> str:
    return host.check_output(f"curl -sf {METRICS}")


def egress_packets(host) -> float:
    m = re.search(r'^retinad_forward_packets_total\{direction="egress"\} (\S+)$', scrape(host), re.M)
    assert m, "no node egress series"
    return float(m.group(1))


def test_service_enabled_and_active(host) -> None:
    service = host.service("retinad")
    assert service.is_enabled
    assert service.is_running


def test_config_rendered_and_valid(host) -> None:
    cfg = host.file("/etc/retinad/retinad.toml")
    assert cfg.exists and cfg.mode == 0o644
    assert host.run("/usr/bin/retinad check-config /etc/retinad/retinad.toml").rc == 0
    assert 'mode = "advanced"' in cfg.content_string
    assert not host.file("/etc/retinad/web-config.yml").exists


def test_ready_and_metrics(host) -> None:
    assert host.run("curl -sf http://127.0.0.1:10095/-/ready").rc == 0
    body = scrape(host)
    assert re.search(r"^retinad_build_info\{", body, re.M)
    assert re.search(r'^retinad_scrape_collector_success\{collector="packetparser"\} 1', body, re.M)


def test_a_packet_sent_inside_moves_the_counter(host) -> None:
    """Seven UDP datagrams to the docker gateway: node egress rises by exactly seven."""
    gateway = host.check_output("ip -4 route show default | awk '{print $3}'")
    before = egress_packets(host)
    send = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"[s.sendto(b'retinad-molecule', ('{gateway}', 9)) for _ in range(7)]"
    )
    host.check_output(f'python3 -c "{send}"')
    deadline = time.monotonic() + 10
    while egress_packets(host) < before + 7 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert egress_packets(host) == pytest.approx(before + 7)
