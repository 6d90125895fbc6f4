"""TLS + basic auth + advanced mode + static resolver, and a reload that kept the PID."""

from __future__ import annotations

import re
import time

import pytest

AUTH = "-u prometheus:molecule-s3cret"
CURL = "curl -s --cacert /etc/retinad/tls/server.crt --resolve localhost:10095:127.0.0.1"


def scrape(host) -> str:
    return host.check_output(f"{CURL} {AUTH} -f https://localhost:10095/metrics")


def self_egress(host) -> float:
    """Egress packets of the endpoint the static resolver names (labels in any order)."""
    want = {
        "direction": "egress",
        "namespace": "molecule",
        "name": "mol-alt-self",
        "workload_kind": "vm",
        "workload_name": "alternative",
    }
    series = re.compile(r"^retinad_endpoint_forward_packets_total\{([^}]*)\} (\S+)$", re.M)
    for labels, value in series.findall(scrape(host)):
        if dict(re.findall(r'(\w+)="([^"]*)"', labels)) == want:
            return float(value)
    return 0.0


def test_web_config_rendered_hashed(host) -> None:
    web = host.file("/etc/retinad/web-config.yml")
    assert web.exists and web.mode == 0o600
    text = web.content_string
    assert "molecule-s3cret" not in text
    assert re.search(r'"prometheus": "\$2b\$12\$', text)
    assert "cert_file: /etc/retinad/tls/server.crt" in text


def test_tls_with_password_answers(host) -> None:
    assert re.search(r"^retinad_build_info\{", scrape(host), re.M)


def test_refused_without_password(host) -> None:
    code = host.check_output(f"{CURL} -o /dev/null -w '%{{http_code}}' https://localhost:10095/metrics")
    assert code == "401"


def test_refused_over_plain_http(host) -> None:
    assert host.run("curl -sf http://127.0.0.1:10095/metrics").rc != 0


def test_reload_kept_the_pid(host) -> None:
    before = host.file("/root/retinad-pid-before").content_string.strip()
    now = host.check_output("systemctl show -p MainPID --value retinad")
    assert before and before != "0"
    assert now == before


def test_reloaded_setting_in_force(host) -> None:
    """side_effect turned dropreason off: its collector is gone, packetparser stays."""
    body = scrape(host)
    assert 'retinad_scrape_collector_success{collector="packetparser"} 1' in body
    assert 'collector="dropreason"' not in body
    assert "[dropreason]\nenabled = false" in host.file("/etc/retinad/retinad.toml").content_string


def test_static_resolver_names_this_instance(host) -> None:
    """Five UDP datagrams from this instance's own address: its static name gets exactly five."""
    gateway = host.check_output("ip -4 route show default | awk '{print $3}'")
    before = self_egress(host)
    send = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"[s.sendto(b'retinad-molecule', ('{gateway}', 9)) for _ in range(5)]"
    )
    host.check_output(f'python3 -c "{send}"')
    deadline = time.monotonic() + 10
    while self_egress(host) < before + 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert self_egress(host) == pytest.approx(before + 5)
