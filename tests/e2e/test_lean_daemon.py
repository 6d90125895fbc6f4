"""The long-lived daemon never maps bcc or LLVM: the compile runs in a child (issue 13).

Read from the kernel, not from Python: /proc/<daemon pid>/maps after READY, and again
after a SIGHUP reload that recompiles (a new child compiles; the daemon still maps none).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_proc import DaemonProcess, NotifySocket, http_get, wait_for

HEAVY = ("libbcc", "libLLVM", "libclang", "libbpfcc")
LATENCY = '[[latency.targets]]\nname = "testnet"\naddress = "192.0.2.0/24"\n'
"""Latency on (a target in TEST-NET-1, which nothing here reaches): its maps are read by
bpf(2) in the daemon too."""


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def mapped_heavy_libraries(pid: int) -> list[str]:
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return sorted({ln.split()[-1] for ln in lines if any(h in ln for h in HEAVY)})


def test_the_daemon_maps_no_bcc_or_llvm_before_and_after_a_recompiling_reload(
    tmp_path: Path, notify: NotifySocket, free_port: int
) -> None:
    cfg = tmp_path / "retinad.toml"
    cfg.write_text('[metrics]\nmode = "basic"\n' + LATENCY)
    args = ["--web.listen-address", f"127.0.0.1:{free_port}", "--config.file", str(cfg)]
    d = DaemonProcess(args, workdir=tmp_path, env={"NOTIFY_SOCKET": str(notify.path)})
    try:
        ready = notify.wait_for("READY=1", timeout=120)
        assert "packetparser:" in ready and "dropreason:" in ready, ready
        assert mapped_heavy_libraries(d.proc.pid) == []
        status, body = http_get(f"http://127.0.0.1:{free_port}/metrics")
        assert status == 200
        for collector in ("packetparser", "dropreason"):
            assert f'retinad_scrape_collector_success{{collector="{collector}"}} 1.0' in body
        assert 'retinad_map_capacity{map="latency_pending"} 16384.0' in body
        lat = 'retinad_handshake_latency_seconds_count{direction="egress",target="testnet"} 0.0'
        assert lat in body

        # advanced mode is compiled in: both plugins need new programs, so new children.
        cfg.write_text('[metrics]\nmode = "advanced"\n' + LATENCY)
        d.signal(signal.SIGHUP)
        wait_for(lambda: "reloaded:" in d.log or None, timeout=120, what="reload")

        def advanced_series() -> str | None:
            _, text = http_get(f"http://127.0.0.1:{free_port}/metrics")
            return text if 'retinad_map_entries{map="packetparser_endpoint"}' in text else None

        text = wait_for(advanced_series, timeout=60, what="metrics after reload")
        assert lat in text  # the recompiled programs' latency maps, read the same way
        assert mapped_heavy_libraries(d.proc.pid) == []
        # Vanishing veths of other workloads log warnings; the reload itself must not fail.
        errors = [ln for ln in d.log.splitlines() if "level=error" in ln or "Traceback" in ln]
        assert errors == []
    finally:
        assert d.stop() == 0
