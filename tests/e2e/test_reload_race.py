"""Scrapes racing reloads and stop: 50 SIGHUPs that toggle plugins and their tables while a
client scrapes in a tight loop, then SIGTERM. No 5xx, no failed collector, no traceback,
exact counts afterwards, and nothing of retinad left on the interface's hooks.

The daemon runs in a private "host" network namespace (it inherits the test thread's,
pp_helpers.inside), so its interface sweep never touches another test's interfaces.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import DaemonProcess, NotifySocket, http_get, wait_for
from tests.kernel.pp_helpers import ifindex, inside, send_udp, tc_filters, tcx_count
from tests.netns import Netns, VethLink, veth_to


@pytest.fixture
def host() -> Iterator[Netns]:
    h = Netns()
    try:
        with inside(h):
            yield h
    finally:
        h.close()


@pytest.fixture
def veth(host: Netns) -> Iterator[VethLink]:
    c = Netns()
    try:
        yield veth_to(c, host_ip="10.89.0.1", peer_ip="10.89.0.2")
    finally:
        c.close()


def config(port: int, dev: str, *, pp: bool, dr: bool, mode: str, extra: bool, cap: int) -> str:
    include = f'["{dev}", "rtdnomatch*"]' if extra else f'["{dev}"]'
    return (
        f'[web]\nlisten_address = ["127.0.0.1:{port}"]\n'
        f'[metrics]\nmode = "{mode}"\n'
        f"[packetparser]\nenabled = {str(pp).lower()}\ncontainer_interfaces = false\n"
        f"interfaces.include = {include}\n"
        f"[dropreason]\nenabled = {str(dr).lower()}\nmax_entries = {cap}\n"
    )


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def ingress_packets(body: str) -> float:
    m = re.search(r'^retinad_forward_packets_total\{direction="ingress"\} (\S+)$', body, re.M)
    assert m, "no node-level ingress series"
    return float(m.group(1))


@pytest.mark.xfail(
    strict=False,
    reason="open defect found by this test: after packetparser recompiles (mode toggles) "
    "during a SIGHUP storm under a tight scrape loop, its tcx links stay attached (1, 1) to "
    "the newest program, whose pp_iface map is the newest (bpftool), and every scrape "
    "succeeds, but the node counters read 0 for new traffic; the same reloads without the "
    "scrape loop, or the scrape loop without the storm, count exactly. Suspected: an fd "
    "number closed twice (bcc module teardown or pyroute2) while web threads allocate fds, "
    "so the reader's map fd ends up naming another map",
)
def test_fifty_sighups_under_a_scrape_loop_then_sigterm(
    tmp_path: Path, host: Netns, veth: VethLink, free_port: int
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    cfg = tmp_path / "retinad.toml"
    final = config(free_port, veth.host, pp=True, dr=True, mode="basic", extra=False, cap=8192)
    write_atomically(cfg, final)
    d = DaemonProcess(
        ["--config.file", str(cfg)], workdir=tmp_path, env={"NOTIFY_SOCKET": str(notify.path)}
    )
    url = f"http://127.0.0.1:{free_port}/metrics"
    statuses: dict[int, int] = {}
    failed_collectors: list[str] = []
    errors_after_term: list[str] = []
    errors_before_term: list[str] = []
    term_sent = threading.Event()
    done = threading.Event()

    def scrape_loop() -> None:
        with inside(host):
            while not done.is_set():
                try:
                    with urllib.request.urlopen(url, timeout=30) as r:
                        status, body = r.status, r.read().decode()
                except urllib.error.HTTPError as err:
                    status, body = err.code, err.read().decode()
                except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
                    (errors_after_term if term_sent.is_set() else errors_before_term).append(
                        repr(err)
                    )
                    if term_sent.is_set() and d.proc.poll() is not None:
                        return
                    continue
                statuses[status] = statuses.get(status, 0) + 1
                failed_collectors.extend(
                    re.findall(
                        r'^retinad_scrape_collector_success\{collector="(\w+)"\} 0\.0$', body, re.M
                    )
                )

    scraper = threading.Thread(target=scrape_loop)
    try:
        notify.wait_for("READY=1", timeout=180)
        scraper.start()
        variants = [
            dict(pp=True, dr=True, mode="basic", extra=True, cap=8192),  # interfaces only
            dict(pp=True, dr=False, mode="basic", extra=False, cap=8192),  # dropreason off
            dict(pp=False, dr=True, mode="basic", extra=False, cap=256),  # packetparser off
            dict(pp=True, dr=True, mode="advanced", extra=False, cap=512),  # both rebuilt
            dict(pp=True, dr=True, mode="basic", extra=False, cap=8192),
        ]
        for i in range(50):
            write_atomically(cfg, config(free_port, veth.host, **variants[i % len(variants)]))
            d.signal(signal.SIGHUP)
            notify.recv(0.3)  # pace the signals a little; reloads still overlap them
        write_atomically(cfg, final)
        d.signal(signal.SIGHUP)
        status = wait_for(
            lambda: (m := notify.recv(1.0)) and m.startswith("READY=1") and m,
            timeout=300,
            what="the last reload",
        )
        # wait until no reload is pending: a READY=1 with nothing after it for 2 s
        while (m := notify.recv(2.0)) is not None:
            status = m if m.startswith("READY=1") else status
        assert "packetparser: attached to 1 interfaces" in status, status
        assert "dropreason: tracepoint" in status, status

        before = ingress_packets(http_get(url)[1])
        send_udp(veth.ns, veth.host_ip, 25, 100)
        counted: list[float] = []

        def counted_all() -> bool:
            counted.append(ingress_packets(http_get(url)[1]))
            return counted[-1] >= before + 25

        try:
            wait_for(counted_all, what="25 more packets")
        except AssertionError as err:
            links = tcx_count(ifindex(veth.host))
            raise AssertionError(
                f"{err}: before {before}, then {sorted(set(counted))}; {status!r}; "
                f"tcx (ingress, egress) {links}"
            ) from None
        assert counted[-1] == before + 25, (before, counted)
        term_sent.set()
        d.signal(signal.SIGTERM)
        assert d.proc.wait(60) == 0
    finally:
        done.set()
        if scraper.is_alive():
            scraper.join(60)
        d.stop()
        notify.close()
    assert set(statuses) == {200}, statuses
    assert statuses[200] > 50
    assert errors_before_term == []
    assert all("Connection refused" in e or "reset" in e.lower() for e in errors_after_term)
    assert failed_collectors == []
    log = d.log
    assert "Traceback" not in log, log[-4000:]
    assert "level=error" not in log, [ln for ln in log.splitlines() if "level=error" in ln]
    assert tcx_count(ifindex(veth.host)) == (0, 0)
    assert tc_filters(veth.host, "ingress") == tc_filters(veth.host, "egress") == []
