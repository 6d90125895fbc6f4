"""SIGHUP against real plugins: the table a plugin starts with, and a plugin that can run
neither its new nor its old settings (reported, not exported as healthy zeros)."""

from __future__ import annotations

import re
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from retinad.kernel.compile import find_bpf_dir
from tests.daemon_proc import DaemonProcess, NotifySocket, http_get


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def sample(body: str, name: str, labels: str) -> float | None:
    m = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", body, re.M)
    return float(m.group(1)) if m else None


def hup(d: DaemonProcess, notify: NotifySocket) -> str:
    d.signal(signal.SIGHUP)
    notify.wait_for("RELOADING=1")
    return notify.wait_for("READY=1", timeout=180)


WEB = '[web]\nlisten_address = ["127.0.0.1:{port}"]\n'
PP_NOWHERE = (
    '[packetparser]\nenabled = {on}\ninterfaces.include = ["rtdnomatch*"]\n'
    "container_interfaces = false\nmax_endpoints = {endpoints}\n"
)


def test_a_plugin_enabled_by_sighup_starts_with_its_new_table(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    cfg = tmp_path / "retinad.toml"
    web = WEB.format(port=free_port)
    cfg.write_text(web + "[packetparser]\nenabled = false\n[dropreason]\nenabled = false\n")
    d = DaemonProcess(
        ["--config.file", str(cfg)], workdir=tmp_path, env={"NOTIFY_SOCKET": str(notify.path)}
    )
    url = f"http://127.0.0.1:{free_port}/metrics"
    try:
        notify.wait_for("READY=1")
        cfg.write_text(web + "[packetparser]\nenabled = false\n[dropreason]\nmax_entries = 128\n")
        assert "dropreason: tracepoint" in hup(d, notify)
        body = http_get(url)[1]
        assert sample(body, "retinad_map_capacity", 'map="drop_counts"') == 128.0
        assert sample(body, "retinad_scrape_collector_success", 'collector="dropreason"') == 1.0
        hup(d, notify)
        assert d.log.count("reload: configuration unchanged") == 1
    finally:
        assert d.stop() == 0
    assert "Traceback" not in d.log


def test_a_reload_whose_programs_cannot_compile_keeps_the_old_and_is_retried(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    """The BPF source vanishes, then a reload needs a recompile: the compile child fails, so
    the running programs (old settings) keep counting and the refusal is not recorded as
    applied; a later SIGHUP (source back) applies the new settings."""
    bpf = tmp_path / "bpf"
    shutil.copytree(find_bpf_dir(), bpf)
    cfg = tmp_path / "retinad.toml"
    web = WEB.format(port=free_port)
    cfg.write_text(
        web + PP_NOWHERE.format(on="true", endpoints=1024) + "[dropreason]\nenabled = false\n"
    )
    d = DaemonProcess(
        ["--config.file", str(cfg)],
        workdir=tmp_path,
        env={"NOTIFY_SOCKET": str(notify.path), "RETINAD_BPF_DIR": str(bpf)},
    )
    base = f"http://127.0.0.1:{free_port}"
    try:
        notify.wait_for("READY=1", timeout=180)
        (bpf / "packetparser.c").rename(tmp_path / "packetparser.c.away")
        cfg.write_text(
            web + PP_NOWHERE.format(on="true", endpoints=2048) + "[dropreason]\nenabled = false\n"
        )
        status = hup(d, notify)
        assert "packetparser: attached to 0 interfaces" in status, status
        body = http_get(base + "/metrics")[1]
        assert sample(body, "retinad_scrape_collector_success", 'collector="packetparser"') == 1.0
        assert sample(body, "retinad_map_capacity", 'map="packetparser_endpoint"') == 1026.0
        assert http_get(base + "/-/ready") == (200, "retinad is Ready.\n")
        assert d.proc.poll() is None

        (tmp_path / "packetparser.c.away").rename(bpf / "packetparser.c")
        status = hup(d, notify)
        assert "packetparser: attached to 0 interfaces" in status, status
        body = http_get(base + "/metrics")[1]
        assert sample(body, "retinad_scrape_collector_success", 'collector="packetparser"') == 1.0
        # the new settings run now (2048 + the 2 overflow keys), not the old ones
        assert sample(body, "retinad_map_capacity", 'map="packetparser_endpoint"') == 2050.0
        assert http_get(base + "/-/ready") == (200, "retinad is Ready.\n")
    finally:
        assert d.stop() == 0
