"""The deb's whole life in a real systemd (PID 1 in a Docker container from the bcc image).

The tests run in file order against one container, as an admin would: install (enabled,
started, READY=1), a real Prometheus scrapes it and sees the forward counters rise, a
changed config applied by ``systemctl reload``, ``systemctl stop`` leaving no tc filter or
tcx link, the watchdog restarting a SIGSTOPped daemon, an upgrade to release 2 that keeps
the changed config and restarts, then remove (config kept) and purge (config gone).

Docker 20.10 knows no CAP_BPF/CAP_PERFMON (research/env-e2e.md gotcha B), so a drop-in
adds CAP_SYS_ADMIN here, the way docs/PACKAGING.md tells users of such runtimes; the unit's
own least-privilege set is proven in test_nspawn_least_privilege.py. The drop-in also
shortens WatchdogSec to 6 s so the hang test takes seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import wait_for
from tests.package.conftest import BCC_IMAGE, Packages
from tests.package.systemd_box import SystemdContainer, container, run, wait_http

UNIT = "retinad.service"
DROPIN = b"""[Service]
# Docker 20.10 cannot grant CAP_BPF/CAP_PERFMON: bcc needs CAP_SYS_ADMIN in here.
CapabilityBoundingSet=CAP_SYS_ADMIN
WatchdogSec=6s
"""
UDP_PACKETS = 500


@pytest.fixture(scope="module")
def box(image_cache: Path) -> Iterator[SystemdContainer]:
    with container(BCC_IMAGE, f"retinad-pkg-deb-{os.getpid()}") as c:
        c.sh("mkdir -p /etc/systemd/system/retinad.service.d")
        c.put(DROPIN, "/etc/systemd/system/retinad.service.d/10-test.conf")
        yield c


@pytest.fixture(scope="module")
def state() -> dict[str, str]:
    """What one test hands the next (the main PID before an upgrade, ...)."""
    return {}


def _bpftool(*args: str) -> list[dict[str, object]]:
    return list(json.loads(run(["bpftool", "-j", *args]) or "[]"))


def _host_pid(box: SystemdContainer, ns_pid: int) -> int | None:
    """The host PID of process ``ns_pid`` of the container's PID namespace."""
    target = os.readlink(f"/proc/{box.pid}/ns/pid")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "ns/pid") != target:
                continue
            nspid = next(
                ln for ln in (proc / "status").read_text().splitlines() if ln.startswith("NSpid:")
            )
        except (OSError, StopIteration):
            continue
        if int(nspid.split()[-1]) == ns_pid:
            return int(proc.name)
    return None


def _ours(box: SystemdContainer) -> tuple[set[int], set[int]]:
    """(program ids, link ids) held by the unit's main process, seen from the host.

    bpftool 7.1 names neither a tcx link's interface nor (here) a program's holders, so
    "ours" is read from retinad's own file descriptors: /proc/<host pid>/fdinfo carries
    prog_id and link_id for each BPF fd. Other sessions' retinads hold other ids.
    """
    pid = _host_pid(box, int(box.show(UNIT, "MainPID")["MainPID"]))
    assert pid is not None, "retinad's main process not found from the host"
    progs: set[int] = set()
    links: set[int] = set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            fields = dict(ln.split(":\t", 1) for ln in fd.read_text().splitlines() if ":\t" in ln)
        except OSError:
            continue
        if "link_id" in fields:
            links.add(int(fields["link_id"]))
        elif "prog_id" in fields:
            progs.add(int(fields["prog_id"]))
    return progs, links


def _still_loaded(progs: set[int], links: set[int]) -> set[str]:
    left = {f"prog {p['id']}" for p in _bpftool("prog", "show") if p["id"] in progs}
    left |= {f"link {x['id']}" for x in _bpftool("link", "show") if x["id"] in links}
    return left


def test_install_enables_starts_and_reports_ready(
    box: SystemdContainer, packages: Packages
) -> None:
    box.put(packages.deb.read_bytes(), "/root/retinad.deb")
    box.sh("DEBIAN_FRONTEND=noninteractive dpkg -i /root/retinad.deb")
    assert box.sh(f"systemctl is-enabled {UNIT}").strip() == "enabled"
    box.wait_active(UNIT)
    s = box.show(UNIT, "Type", "NotifyAccess", "StatusText", "WatchdogUSec", "Result")
    assert (s["Type"], s["NotifyAccess"], s["WatchdogUSec"]) == ("notify", "main", "6s")
    assert "packetparser: attached to" in s["StatusText"], s
    assert "serving on [::]:10095" in s["StatusText"], s
    assert box.sh("retinad --version").strip() == f"retinad {packages.version}"
    # gotcha H: verify exits 0 on warnings, so any output at all is a failure.
    proc = subprocess.run(
        box.exec_argv(["systemd-analyze", "verify", f"/lib/systemd/system/{UNIT}"]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_prometheus_sees_forward_counters_rise(box: SystemdContainer, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus") or "/usr/bin/prometheus"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs: [{job_name: retinad, static_configs: "
        f"[{{targets: ['{box.ip}:10095']}}]}}]\n"
    )
    prom = subprocess.Popen(
        [
            prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Inside a container eth0 is a veth whose peer is in another namespace; it carries the
    # container's default route, so retinad takes it for this machine's uplink, a host
    # interface (kernel/interfaces.role_of): its packets are the node series.
    query = "sum(retinad_forward_packets_total)"

    def value() -> list[float] | None:
        """[the query's value] once Prometheus has a sample (a list: 0.0 is a value)."""
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                result = json.load(resp)["data"]["result"]
        except OSError:
            return None
        return [float(result[0]["value"][1])] if result else None

    try:
        (before,) = wait_for(value, timeout=60, what="a first scraped sample")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for _ in range(UDP_PACKETS):
                udp.sendto(b"x" * 64, (box.ip, 9))
        after = wait_for(
            lambda: (v := value()) is not None and v[0] >= before + UDP_PACKETS and v,
            timeout=60,
            what=f"eth0 packets to rise by {UDP_PACKETS} from {before}",
        )
        assert after[0] >= before + UDP_PACKETS
    finally:
        prom.terminate()
        prom.wait(timeout=30)


def test_reload_applies_a_changed_config(box: SystemdContainer, state: dict[str, str]) -> None:
    pid = box.show(UNIT, "MainPID")["MainPID"]
    new = 'listen_address = [":10096"]'
    box.sh(f"sed -i 's/^listen_address = .*/{new}/' /etc/retinad/retinad.toml")
    box.sh(f"systemctl reload {UNIT}")
    wait_http(f"http://{box.ip}:10096/metrics", timeout=30)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{box.ip}:10095/metrics", timeout=5)
    assert box.show(UNIT, "MainPID")["MainPID"] == pid
    state["pid"] = pid


def test_stop_leaves_no_filter_or_link(box: SystemdContainer, state: dict[str, str]) -> None:
    progs, links = _ours(box)
    # Both hooks of eth0 (tcx here, or tc clsact filters) and the drop tracepoint.
    assert len(progs) >= 3 and len(links) >= 1, (progs, links)
    box.sh(f"systemctl stop {UNIT}")
    assert box.show(UNIT, "ActiveState")["ActiveState"] == "inactive"
    assert _still_loaded(progs, links) == set()
    assert box.sh("tc filter show dev eth0 ingress; tc filter show dev eth0 egress") == ""
    box.sh(f"systemctl start {UNIT}")
    box.wait_active(UNIT)
    state["progs"] = " ".join(map(str, sorted(progs)))


def test_watchdog_restarts_a_hung_daemon(box: SystemdContainer) -> None:
    before = box.show(UNIT, "MainPID", "NRestarts")
    box.sh(f"kill -STOP {before['MainPID']}")
    new_pid = box.wait_active(UNIT, not_pid=before["MainPID"])
    after = box.show(UNIT, "NRestarts")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1
    journal = box.sh(f"journalctl -u {UNIT} -o cat --no-pager")
    assert "Failed with result 'watchdog'" in journal
    assert f"Killing process {before['MainPID']} (retinad) with signal SIGABRT" in journal
    assert new_pid != before["MainPID"]


def test_upgrade_keeps_the_changed_config_and_restarts(
    box: SystemdContainer, packages: Packages
) -> None:
    pid = box.show(UNIT, "MainPID")["MainPID"]
    box.put(packages.deb_next.read_bytes(), "/root/retinad-next.deb")
    box.sh("DEBIAN_FRONTEND=noninteractive dpkg -i /root/retinad-next.deb")
    installed = box.sh("dpkg-query -W -f '${Version}' retinad")
    assert installed == f"{packages.version}-2"
    assert 'listen_address = [":10096"]' in box.sh("cat /etc/retinad/retinad.toml")
    assert box.sh("ls /etc/retinad") == "retinad.toml\n"  # no .dpkg-dist/.dpkg-new beside it
    box.wait_active(UNIT, not_pid=pid)
    wait_http(f"http://{box.ip}:10096/metrics", timeout=60)


def test_remove_keeps_config_and_purge_removes_it(box: SystemdContainer) -> None:
    progs, links = _ours(box)
    assert progs, "retinad holds no programs before the remove"
    box.sh("dpkg -r retinad")
    assert _still_loaded(progs, links) == set()
    assert box.show(UNIT, "LoadState")["LoadState"] == "not-found"
    assert box.rc("test -e /usr/lib/retinad || test -e /usr/bin/retinad") == 1
    assert box.rc("test -f /etc/retinad/retinad.toml && test -f /etc/default/retinad") == 0
    box.sh("dpkg -P retinad")
    assert box.rc("test -e /etc/retinad || test -e /etc/default/retinad") == 1
    assert box.rc("test -e /etc/systemd/system/multi-user.target.wants/retinad.service") == 1
    assert box.rc("dpkg-query -W -f '${Status}' retinad | grep -q installed") == 1
