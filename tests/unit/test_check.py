"""``retinad check`` on this machine: kernel 6.18 without kprobes and fentry."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from retinad.cli import main


def rows(out: str) -> dict[str, tuple[str, str, str]]:
    table: dict[str, tuple[str, str, str]] = {}
    for line in out.splitlines()[1:]:
        if not line.strip():
            break
        name, status, needed, detail = line.split(None, 3)
        table[name] = (status, needed, detail)
    return table


def test_check_reports_this_kernel(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    t = rows(out)
    for available in ("tc", "tracepoints", "ringbuf", "tcx", "btf", "kfree_skb_reason", "bcc"):
        assert t[available][0] == "ok", (available, t[available])
    assert t["kprobes"] == (
        "info",
        "no",
        "unavailable (CONFIG_KPROBES off): dropreason uses the tracepoint only",
    )
    assert t["fentry"] == ("info", "no", "unavailable: dropreason uses the tracepoint only")
    assert t["kernel_headers"][:2] == ("ok", "yes")
    assert out.rstrip().endswith("retinad can run with this config.")


def test_check_needs_less_when_plugins_are_off(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--no-collector.packetparser", "--no-collector.dropreason"]) == 0
    t = rows(capsys.readouterr().out)
    assert t["bcc"][1] == "no" and t["kfree_skb_reason"][1] == "no"


def check_without_headers(*flags: str) -> subprocess.CompletedProcess[str]:
    """``retinad check`` on a host without kernel headers, made for real in a private mount
    namespace (an empty tmpfs over /lib/modules), so the host itself is untouched."""
    script = f"mount -t tmpfs none /lib/modules && {sys.executable} -m retinad check " + " ".join(
        flags
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_fails_when_kernel_headers_are_missing() -> None:
    p = check_without_headers("--no-collector.dropreason")
    assert p.returncode == 1, p.stdout + p.stderr
    t = rows(p.stdout)
    assert t["kernel_headers"][:2] == ("MISSING", "yes")
    assert "apt-get install linux-headers-" in t["kernel_headers"][2]
    assert p.stdout.rstrip().endswith(
        "retinad cannot run with this config: 1 needed item(s) missing."
    )


def test_headers_not_needed_without_bpf_plugins() -> None:
    p = check_without_headers("--no-collector.dropreason", "--no-collector.packetparser")
    assert p.returncode == 0, p.stdout + p.stderr
    assert rows(p.stdout)["kernel_headers"][:2] == ("absent", "no")


@pytest.mark.parametrize(
    ("transport", "detail"),
    [
        ("auto", "transport ringbuf (auto: the kernel has a ring buffer)"),
        ("perf", "transport perf (configured)"),
    ],
)
def test_check_says_which_flow_event_transport_the_daemon_would_use(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, transport: str, detail: str
) -> None:
    """The answer comes from libbpf's ringbuf map probe, which the ringbuf row shows too."""
    cfg = tmp_path / "retinad.toml"
    cfg.write_text(f'[packetparser.events]\nenabled = true\ntransport = "{transport}"\n')
    assert main(["--config.file", str(cfg), "check"]) == 0
    t = rows(capsys.readouterr().out)
    assert t["ringbuf"][0] == "ok"
    assert t["flow_events"] == ("ok", "yes", detail)
