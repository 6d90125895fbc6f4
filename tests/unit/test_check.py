"""``retinad check`` tells the truth about whichever kernel runs it (host 6.18, 6.1, 5.10)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from retinad.cli import main
from retinad.kernel import features


def rows(out: str) -> dict[str, tuple[str, str, str]]:
    table: dict[str, tuple[str, str, str]] = {}
    for line in out.splitlines()[1:]:
        if not line.strip():
            break
        name, status, needed, detail = line.split(None, 3)
        table[name] = (status, needed, detail)
    return table


def _loads(prog_type: int) -> bool:
    """libbpf's own probe for a program type; an EPERM (fentry answers it even to root on
    some kernels) reads as "does not load"."""
    try:
        return bool(features.prog_type_supported(prog_type))
    except features.PermissionDenied:
        return False


def expected_rows() -> dict[str, tuple[str, str]]:
    """(status, needed) of the kernel-dependent rows, from this kernel's own evidence:
    tracefs files, the tracepoint format, libbpf's probes. The same suite is run on 6.18
    (the CI host), 6.1 and 5.10 (make test-kernels), so nothing here names one kernel."""
    tdir = features.tracefs_dir()
    kprobes = Path("/sys/bus/event_source/devices/kprobe/type").is_file()  # the kprobe PMU
    fmt = tdir / "events/skb/kfree_skb/format" if tdir else None
    reason = fmt is not None and " reason;" in fmt.read_text()
    ok_or = {True: "ok"}
    return {
        "tc": ("ok", "yes"),
        "tracepoints": ("ok", "yes"),
        "ringbuf": ("ok", "no"),
        "btf": ("ok", "yes"),
        "bcc": ("ok", "yes"),
        "kernel_headers": ("ok", "yes"),
        "tcx": (ok_or.get(features.has_tcx(), "info"), "no"),
        "kfree_skb_reason": (ok_or.get(reason, "absent"), "no"),
        "kprobes": (ok_or.get(kprobes, "info"), "no"),
        "fentry": (ok_or.get(_loads(26), "info"), "no"),
        "dropreason_source": ("ok", "yes"),
    }


def test_check_reports_what_the_probes_find(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check"]) == 0
    out = capsys.readouterr().out
    t = rows(out)
    assert {name: t[name][:2] for name in expected_rows()} == expected_rows()
    if t["kprobes"][0] == "info":
        assert t["kprobes"][2] == "unavailable (CONFIG_KPROBES off): no dropreason fallback hooks"
    src = features.dropreason_source()
    assert t["dropreason_source"][2] == f"{src.kind}: {src.why}"
    want = "tracepoint" if t["kfree_skb_reason"][0] == "ok" else "hooks"
    assert src.kind == want
    assert out.rstrip().endswith("retinad can run with this config.")


def test_hooks_source_needs_kprobes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """source = "hooks" is OK where kprobes exist, and a needed, missing item elsewhere."""
    cfg = tmp_path / "retinad.toml"
    cfg.write_text('[dropreason]\nsource = "hooks"\n')
    rc = main(["check", "--config.file", str(cfg)])
    t = rows(capsys.readouterr().out)
    if features.has_kprobes():
        assert rc == 0 and t["dropreason_source"][:2] == ("ok", "yes")
        assert t["tracepoints"][1] == "no"
    else:
        assert rc == 1
        assert t["dropreason_source"] == (
            "MISSING",
            "yes",
            "source = hooks needs kprobes (CONFIG_KPROBES) -> a 5.17+ kernel, or one with kprobes",
        )


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
